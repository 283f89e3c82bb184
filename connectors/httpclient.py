"""The HTTP plumbing REST connectors share: one client per processor, errors classified once.

:class:`HttpClient` holds a processor's pooled ``aiohttp`` session, its base URL,
its client-side rate limit (a :class:`TokenBucket`) and the credentials to scrub;
each request arrives as arguments and comes back as an :class:`HttpResponse`, read
whole. :func:`bearer` makes the header of a bearer token. The ``http``,
``hubspot``, ``hotjar`` and ``google-analytics`` connectors all speak through it.

A relative target's path is sent as written (escapes kept, dot segments never
re-normalised, RFC 3986 §5.2.4); an absolute URL, such as a next-page link, must
stay on the base URL's origin, so credentials never travel to another host.

A processor is not trusted to be well-behaved. Its answer is read into memory only
up to ``max_response_bytes`` (32 MiB unless configured; counted after decompression,
so a gzip bomb stops there too): a longer one is a
:class:`~connectors.errors.PermanentError` ("answer larger than 32 MiB") and the
connection is dropped unread. ``timeout`` bounds the whole exchange — connecting,
the headers and the last byte of the body — so a server trickling bytes forever
ends as a :class:`~connectors.errors.TransientError` like one that never answers.
Redirects (3xx) are never followed: a redirect to another origin would take the
credentials there (aiohttp drops ``Authorization`` across origins, but not an API
key in a header of another name), and one within the origin is a configuration to
fix; either is a :class:`~connectors.errors.PermanentError` saying so.

Errors are classified once, in :class:`HttpClient`: 429 (and 503 with
``Retry-After``) becomes :class:`~connectors.errors.RateLimited` with the
``Retry-After`` delay (RFC 9110 §10.2.3, seconds or an HTTP date); 408, 5xx,
timeouts and dropped connections become :class:`~connectors.errors.TransientError`;
any other 4xx a :class:`~connectors.errors.PermanentError`. The message is
Handover's own words: processor, operation, method and path *template*, status (and
an error code from a closed list when the connector names one, see ``error_code``);
never the URL sent, which may carry the subject's email. The processor's own words —
an excerpt of the body, a ``Location``, the transport's error text — go to the
error's ``detail`` (admins only). Credentials are held as
:class:`~connectors.options.Secret` and scrubbed from messages and details alike;
they are never part of a ``repr``.

References: RFC 9110 (HTTP semantics, Retry-After), RFC 8288 (Link header),
RFC 6750 (bearer tokens), RFC 3986 (percent-encoding, dot segments).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import orjson
from yarl import URL

from connectors.errors import ConnectorError, PermanentError, RateLimited, TransientError
from connectors.options import MASK, Secret

Clock = Callable[[], float]
"""Seconds on a monotonic scale (``time.monotonic`` unless a test injects its own)."""

Sleep = Callable[[float], Awaitable[None]]
"""Waits that many seconds (``asyncio.sleep`` unless a test injects its own)."""

ErrorCode = Callable[[Any], str | None]
"""Reads a code from a processor's decoded error answer, returned only when it is one
of a closed list the connector knows (e.g. Google's ``PERMISSION_DENIED``): a code
from that list is Handover's own word and may stand in the message; anything else
stays in the detail."""

MIB = 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 32 * MIB
"""What one answer may weigh in memory, unless the connector configures otherwise."""

_CHUNK_BYTES = 64 * 1024
_EXCERPT_CHARS = 200
# What may stand in a request target as written: RFC 3986 unreserved and sub-delims,
# ":@/?", and "%" when it starts an escape; anything else is percent-encoded.
_NOT_AS_WRITTEN = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]")


class TokenBucket:
    """A client-side rate limit: ``rate`` requests per second, bursts of up to ``capacity``.

    The bucket starts full. ``clock`` and ``sleep`` are injectable so that a test can
    drive time by hand and count what the bucket lets through.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("a token bucket needs a rate above zero")
        self.rate = rate
        self.capacity = max(1.0, rate if capacity is None else capacity)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()

    def try_take(self) -> float:
        """Take a token and return 0.0, or return the seconds until one will be free."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0 - 1e-9:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def take(self) -> None:
        """Wait until a token is free, then take it."""
        while (wait := self.try_take()) > 0:
            await self._sleep(wait)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), or None."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A processor's answer, read whole: status, headers, body and the next-page link.

    ``source`` names the request in Handover's own words (for error messages);
    ``secrets`` are scrubbed from any excerpt of the body.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str
    next_link: str | None
    source: str
    secrets: tuple[Secret, ...] = field(default=(), repr=False)

    def json(self) -> Any:
        """The body as JSON (None when empty); anything else is a permanent error."""
        if not self.body.strip():
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(
                f"{self.source}: HTTP {self.status}: the answer is not JSON",
                detail=_excerpt(self.body, self.secrets),
            ) from exc


def _scrubbed(text: str, secrets: Sequence[Secret]) -> str:
    for secret in secrets:
        if secret.reveal():
            text = text.replace(secret.reveal(), MASK)
    return text


def _excerpt(body: bytes | str, secrets: Sequence[Secret] = ()) -> str:
    """The start of a processor's answer on one line, credentials masked: for ``detail``."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = _scrubbed(" ".join(text.split()), secrets)
    if not text:
        return "(empty body)"
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "…"


def describe_size(size: int) -> str:
    """``size`` bytes as an operator writes it: ``32 MiB``, or ``1500 bytes``."""
    return f"{size // MIB} MiB" if size % MIB == 0 else f"{size} bytes"


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _as_written(target: str) -> str:
    """``target`` with what a URL cannot carry percent-encoded, escapes left as they are."""
    return _NOT_AS_WRITTEN.sub(lambda match: quote(match.group(), safe=""), target)


class HttpClient:
    """One processor's HTTP API: a pooled session, a rate limit, and errors classified once.

    Built with the connector from its configuration; :meth:`open` creates the one
    ``aiohttp.ClientSession`` its requests share and :meth:`close` releases it.
    Everything about one request arrives as arguments. ``secrets`` are scrubbed from
    every error message and detail; ``limiter`` may be replaced (tests inject a
    clock). ``timeout`` bounds each request's whole exchange, ``max_response_bytes``
    each answer; ``error_code`` (see :data:`ErrorCode`) may name the processor's
    error code in messages.
    """

    def __init__(
        self,
        processor: str,
        base_url: str,
        *,
        secrets: Sequence[Secret] = (),
        headers: Mapping[str, str] | None = None,
        rate_limit: float = 0.0,
        burst: float | None = None,
        timeout: float = 30.0,
        default_retry_after: float = 1.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        error_code: ErrorCode | None = None,
    ) -> None:
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        self.processor = processor
        self.base_url = base_url.rstrip("/")
        self.secrets = list(secrets)
        self.headers = dict(headers or {})
        self.limiter = TokenBucket(rate_limit, burst) if rate_limit > 0 else None
        self.timeout = timeout
        self.default_retry_after = default_retry_after
        self.max_response_bytes = max_response_bytes
        self.error_code = error_code
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpClient({self.processor!r}, {self.base_url!r})"

    async def open(self) -> None:
        """Create the shared session (once)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), headers=self.headers
            )

    async def close(self) -> None:
        """Close the shared session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, target: str) -> URL:
        """``target`` joined to the base URL; an absolute URL must stay on the base's origin.

        A relative target's path is sent as written: yarl would otherwise decode
        ``%2E`` and remove dot segments, and ``/users/%2E%2E`` would become ``/``.
        """
        try:
            absolute = bool(urlsplit(target).scheme)
            if absolute and _origin(target) == _origin(self.base_url):
                return URL(target)
        except ValueError as exc:
            raise PermanentError(
                f"{self.processor}: refusing a URL that cannot be parsed",
                detail=_excerpt(target, self.secrets),
            ) from exc
        if absolute:
            raise PermanentError(
                f"{self.processor}: refusing to follow a URL off {self.base_url}'s origin",
                detail=_excerpt(target, self.secrets),
            )
        base = str(URL(self.base_url)).rstrip("/")
        return URL(f"{base}/{_as_written(target.lstrip('/'))}", encoded=True)

    async def request(
        self,
        method: str,
        target: str,
        *,
        operation: str,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] = (),
        accept: Collection[int] = (),
        path_template: str | None = None,
    ) -> HttpResponse:
        """Send one request; a 2xx or a status in ``accept`` is returned, anything else raised.

        ``operation`` and ``path_template`` (the path as configured, ``/users/{id}``)
        name the request in error messages; the URL sent is left out: it may carry
        the subject's email. ``secrets`` are scrubbed besides the client's.
        """
        if self._session is None:
            raise PermanentError(f"{self.processor}: connector used before open()")
        source = f"{self.processor}: {operation}"
        if path_template is not None:
            source += f" ({method} {path_template})"
        scrub = (*self.secrets, *secrets)
        url = self.url(target)
        if self.limiter is not None:
            await self.limiter.take()
        try:
            # The whole exchange, the body's last byte included: a trickle ends too.
            async with (
                asyncio.timeout(self.timeout),
                self._session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=form,
                    headers=headers,
                    allow_redirects=False,
                ) as response,
            ):
                body = await self._read(response, source)
                link = response.links.get("next")
                next_link = None if link is None else link.get("url")
                result = HttpResponse(
                    status=response.status,
                    headers=response.headers,
                    body=body,
                    url=str(response.url),
                    next_link=None if next_link is None else str(next_link),
                    source=source,
                    secrets=scrub,
                )
        except TimeoutError as exc:
            raise TransientError(f"{source}: no complete answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise TransientError(
                f"{source}: {type(exc).__name__}", detail=_scrubbed(str(exc), scrub)
            ) from exc
        if 200 <= result.status < 300 or result.status in accept:
            return result
        raise self._failure(result, scrub)

    async def _read(self, response: aiohttp.ClientResponse, source: str) -> bytes:
        """The body, refused once it passes ``max_response_bytes`` (declared or counted)."""
        limit = self.max_response_bytes
        declared = response.content_length
        if declared is None or declared <= limit:
            body = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                body += chunk
                if len(body) > limit:
                    break
            else:
                return bytes(body)
        raise PermanentError(
            f"{source}: HTTP {response.status}: answer larger than {describe_size(limit)}, "
            "the rest left unread"
        )

    def _failure(self, response: HttpResponse, secrets: Sequence[Secret]) -> ConnectorError:
        status = response.status
        code = self._error_code(response)
        where = f"{response.source}: HTTP {status}" + (f" {code}" if code else "")
        if 300 <= status < 400:
            return self._redirect(response, where, secrets)
        excerpt = _excerpt(response.body, secrets)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429 or (status == 503 and retry_after is not None):
            wait = self.default_retry_after if retry_after is None else retry_after
            return RateLimited(f"{where} (retry after {wait:g}s)", retry_after=wait, detail=excerpt)
        if status >= 500 or status == 408:
            return TransientError(where, detail=excerpt)
        if status in (401, 403):
            return PermanentError(f"{where}, credentials refused", detail=excerpt)
        return PermanentError(where, detail=excerpt)

    def _error_code(self, response: HttpResponse) -> str | None:
        if self.error_code is None:
            return None
        try:
            return self.error_code(orjson.loads(response.body))
        except orjson.JSONDecodeError:
            return None

    def _redirect(
        self, response: HttpResponse, where: str, secrets: Sequence[Secret]
    ) -> PermanentError:
        location = response.headers.get("Location")
        if location is None:
            return PermanentError(f"{where}: a redirect without a Location, not followed")
        try:
            elsewhere = _origin(urljoin(response.url, location)) != _origin(self.base_url)
        except ValueError:
            elsewhere = True
        leads = "to another origin" if elsewhere else "within the processor's origin"
        return PermanentError(
            f"{where}: a redirect {leads}, not followed (redirects never are)",
            detail=f"Location: {_excerpt(location, secrets)}",
        )


def bearer(token: Secret) -> dict[str, str]:
    """The ``Authorization`` header for a bearer token (RFC 6750)."""
    return {"Authorization": f"Bearer {token.reveal()}"}
