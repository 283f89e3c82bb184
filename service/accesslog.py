"""The API's access log: one JSON line per request, naming its route, never its path.

The line is written straight to :func:`service.logs.configure`'s JSON handler, the
same fields in the same order as structlog renders them, without a ``LogRecord`` or the
processor chain: it is one line per request, on the API's hot path. The lines of the
requests one turn of the event loop answered go out in one write at the end of that
turn (:meth:`service.logs.JsonLinesHandler.write_soon`), and before any other line, so
the order of lines stays the order of events. Where another handler listens (a test
capturing logs), the line goes through ``logging`` as any other.

Apart from :mod:`service.logs` because it is aiohttp's: the commands that serve the API
import it, and a worker, which logs through :mod:`service.logs` too, never loads aiohttp.
"""

from __future__ import annotations

import datetime
import functools
import logging
import time

import orjson
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from service.logs import JsonLinesHandler, MalformedRequests, redact

#: Request methods logged as they are; any other is redacted first, like any logged text.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, route template, status, duration; no path, no query."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        route = "unmatched"
        try:
            match_info = getattr(request, "match_info", None)
        except AssertionError:  # a malformed request never reached the router
            match_info = None
        resource = getattr(getattr(match_info, "route", None), "resource", None)
        if resource is not None and resource.canonical:
            route = resource.canonical
        method = request.method if request.method in _METHODS else redact(request.method)
        seconds = round(time, 4)
        handlers = self._json_handlers()
        if handlers is None:
            extra = {"method": method, "route": route, "status": response.status}
            self.logger.info("request", extra={**extra, "seconds": seconds})
            return
        line = (
            '{"event": "request", "level": "info", "logger": '
            f"{_json(self.logger.name)}, "
            f'"timestamp": "{_now()}", "method": {_json(method)}, '
            f'"route": {_json(route)}, "status": {response.status}, "seconds": {seconds!r}}}'
        )
        for handler in handlers:
            handler.write_soon(line)

    def _json_handlers(self) -> list[JsonLinesHandler] | None:
        """The handlers an info line of this logger reaches, if :func:`configure` made
        them all; ``None`` (log it the ordinary way) if any other would see it, a
        filter could change it, or bound context variables belong in it."""
        if self.logger.filters or structlog.contextvars.get_contextvars():
            return None
        logger: logging.Logger | None = self.logger
        found: list[JsonLinesHandler] = []
        while logger is not None:
            for handler in logger.handlers:
                if not isinstance(handler, JsonLinesHandler) or not all(
                    isinstance(f, MalformedRequests) for f in handler.filters
                ):
                    return None
                if handler.level <= logging.INFO:
                    found.append(handler)
            logger = logger.parent if logger.propagate else None
        return found


def _json(text: str) -> str:
    return orjson.dumps(text).decode()


def _now() -> str:
    """The time as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it, the date and
    time of day formatted once a second (a line per request is on the hot path)."""
    seconds, micro = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{_second(seconds)}.{micro:06d}Z" if micro else f"{_second(seconds)}Z"


@functools.lru_cache(maxsize=1)
def _second(seconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat().removesuffix("+00:00")
