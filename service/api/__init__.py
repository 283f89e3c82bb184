"""The HTTP API, a module per concern.

``operations`` is the table that both routes requests and documents them
(``/openapi.json``); ``handlers`` parse, authorise, call the domain and render through
``views``; ``models`` are the request and response shapes; ``middleware`` answers
every error as a problem (``service/problems.py``).
"""
