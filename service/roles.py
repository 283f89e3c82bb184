"""The roles a bearer token grants (its ``roles`` claim).

Apart from :mod:`service.auth`, which checks them on every request, so that the
command line (``handover token --role``) names them without importing the API's
modules: a ``handover worker`` never loads aiohttp's server.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a token's holder may do."""

    SUBJECT = "subject"
    SUPPORT = "support"
    ADMIN = "admin"
