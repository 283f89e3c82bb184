"""The ``handover`` command line, a module per command group.

``main`` is the entry point: the argument parser, and serve, api, worker, token,
verify and audit. ``jobs`` holds ``handover jobs`` and ``handover export``, over the
HTTP API through ``client``; ``connectors`` holds ``handover connectors list`` and
``check``, and ``scaffold`` its ``new``, written from the package data in ``templates/``.
``malloc`` is how ``handover worker`` has glibc give large freed buffers back.
"""
