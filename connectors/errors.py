"""Errors a connector raises, classified once for the whole system.

::

    ConnectorError
     ├── TransientError        the processor may answer next time: retry with backoff
     │    └── RateLimited      the processor said when to come back (Retry-After)
     ├── PermanentError        retrying will not help: fail this connector now
     └── ConnectorLoadError    a configured connector could not be found or built

Connectors map foreign errors at their boundary (``raise TransientError(...) from exc``);
the job pipeline decides what to do from the class alone.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every error a connector reports."""


class TransientError(ConnectorError):
    """A failure that may pass: a timeout, a 5xx, a dropped connection."""


class RateLimited(TransientError):
    """The processor asks us to slow down; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """A failure retrying cannot fix: bad credentials, a contract broken by the connector."""


class ConnectorLoadError(ConnectorError):
    """A configured connector type could not be discovered, imported or built."""
