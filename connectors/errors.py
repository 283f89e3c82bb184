"""Errors a connector raises, classified once for the whole system.

::

    ConnectorError
     ├── TransientError        the processor may answer next time: retry with backoff
     │    └── RateLimited      the processor said when to come back (Retry-After)
     ├── PermanentError        retrying will not help: fail this connector now
     ├── Unidentified          none of the identifiers the connector needs is known:
     │                         the processor was not asked (never "nothing held")
     └── ConnectorLoadError    a configured connector could not be found or built

Connectors map foreign errors at their boundary (``raise TransientError(...) from exc``);
the job pipeline decides what to do from the class alone.

An error has two texts. Its message (``str(error)``) is Handover's own words, safe for
support staff and webhooks: the connector, the operation, an HTTP method and path
*template*, the HTTP status, the driver's error class or SQLSTATE; never a processor's
answer, never a subject's identifier. :attr:`ConnectorError.detail` holds the
processor's own words (a body excerpt, a database driver's message), credentials
scrubbed: they may hold personal data, and are shown to admins only.
"""

from __future__ import annotations

from collections.abc import Iterable

DETAIL_CHARS = 1000
"""The most characters of :attr:`ConnectorError.detail` kept; the rest is cut."""


class ConnectorError(Exception):
    """Base of every error a connector reports.

    ``message`` (``str(error)``) is Handover's own words, shown to staff and sent in
    webhooks. ``detail``, keyword-only, is the processor's own words: may hold personal
    data; shown to admins only. It is kept out of ``str(error)`` and cut at
    :data:`DETAIL_CHARS` characters.
    """

    def __init__(self, *args: object, detail: str | None = None) -> None:
        super().__init__(*args)
        if detail is not None and len(detail) > DETAIL_CHARS:
            detail = detail[:DETAIL_CHARS] + "…"
        self.detail = detail


class TransientError(ConnectorError):
    """A failure that may pass: a timeout, a 5xx, a dropped connection."""


class RateLimited(TransientError):
    """The processor asks us to slow down; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after


class PermanentError(ConnectorError):
    """A failure retrying cannot fix: bad credentials, a contract broken by the connector."""


class Unidentified(ConnectorError):
    """The subject cannot be found at this processor: none of ``needs`` is known.

    Raised instead of answering "nothing held": the processor was never asked. The
    job records the connector as ``unidentified`` and waits for support to supply
    one of ``needs`` or to decide to go without this processor.
    """

    def __init__(self, connector: str, needs: Iterable[str]) -> None:
        self.connector = connector
        self.needs = tuple(sorted(needs))
        super().__init__(
            f"connector {connector!r} needs the subject's {' or '.join(self.needs)}, "
            "and none is known"
        )


class ConnectorLoadError(ConnectorError):
    """A configured connector type could not be discovered, imported or built."""
