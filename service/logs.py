"""Structured JSON logs that hold no personal data and no secrets.

Every line is one JSON object (structlog renders stdlib records too: aiohttp,
arq, botocore). Handover's own code never logs a subject's id or email: jobs
are named by id, and where a subject must be named, by a keyed hash
(:meth:`jobs.archive.signing.Signer.pseudonym`). As a second line of defence, a
redaction step removes bearer tokens, JWTs, URL signatures and tokens, and email
addresses from every line; a malformed request is logged as its error's class, not
its raw request line; and the access log (:mod:`service.accesslog`) records the
matched route, never the raw path or query.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TextIO, TypeGuard

import structlog

if TYPE_CHECKING:
    from aiohttp.http_exceptions import HttpProcessingError

_SECRETS = [
    (re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[jwt redacted]"),
    (
        re.compile(
            r"(?i)(x-amz-signature|x-amz-credential|x-amz-security-token|signature|token)"
            r"=[^&\s\"']+"
        ),
        r"\1=[redacted]",
    ),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[email redacted]"),
]


#: What each of :data:`_SECRETS` needs somewhere in a text to find anything: most lines
#: hold none of it, and are looked through once rather than once per pattern.
_ANY_SECRET = re.compile(r"(?i)bearer|eyJ|=|@")


def redact(text: str) -> str:
    """``text`` without tokens or URL signatures."""
    if not _ANY_SECRET.search(text):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def _malformed_request(error: BaseException | None) -> TypeGuard[HttpProcessingError]:
    """Whether ``error`` is aiohttp's for a malformed request. Its class is looked up where
    aiohttp keeps it, not imported: a process that never loaded aiohttp (a worker) has no
    such error to log, and logging does not load aiohttp into it."""
    exceptions = sys.modules.get("aiohttp.http_exceptions")
    return exceptions is not None and isinstance(error, exceptions.HttpProcessingError)


class MalformedRequests(logging.Filter):
    """aiohttp logs a malformed request with its raw request line (a path may hold an
    email): keep one line naming the error's class, without the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if _malformed_request(error):
            record.msg, record.args = (
                "malformed request refused (%s %s)",
                (
                    error.code,
                    type(error).__name__,
                ),
            )
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"  # the client's fault
        return True


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route every logger in the process to one JSON-lines handler."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact_event,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = JsonLinesHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(MalformedRequests())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # StreamHandler flushes after every record, so lines reach a pipe or a file as they
    # happen. Which source botocore took credentials from is noise on every start.
    logging.getLogger("botocore.credentials").setLevel(max(level, logging.WARNING))


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """The stream handler :func:`configure` installs, which also takes lines written ahead.

    :meth:`write_soon` keeps a line until the end of the event loop's current turn, so
    that the lines of many requests cost one write; any record emitted meanwhile
    writes them first.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []

    def write_soon(self, line: str) -> None:
        """Write ``line`` (one JSON object) at the end of this turn of the running loop."""
        self.acquire()
        try:
            self._waiting.append(line)
            first = len(self._waiting) == 1
        finally:
            self.release()
        if first:
            asyncio.get_running_loop().call_soon(self.write_waiting)

    def write_waiting(self) -> None:
        """Write the lines kept by :meth:`write_soon`, in one write."""
        self.acquire()
        try:
            self._write_waiting()
        finally:
            self.release()
        self.flush()

    def _write_waiting(self) -> None:
        if self._waiting:
            self.stream.write(self.terminator.join(self._waiting) + self.terminator)
            self._waiting.clear()

    def emit(self, record: logging.LogRecord) -> None:
        """Write the lines waiting, then ``record``, as any stream handler does."""
        if self._waiting:
            self.acquire()
            try:
                self._write_waiting()
            finally:
                self.release()
        super().emit(record)
