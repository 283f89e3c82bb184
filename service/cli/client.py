"""The HTTP API's client for ``handover jobs`` and ``handover export``.

:class:`Connection` says where the API is and whose token to send; :class:`ApiClient`
makes the calls, follows a job's live event stream (server-sent events) and
downloads archives. Transport failures and the API's problems become :class:`CliError`.

Errors, each printed as one ``handover: ...`` line on stderr::

    CliError            its exit_status ends the process
    ├── UsageError      a missing or malformed setting (2)
    ├── Unreachable     the API, or a download link, cannot be reached (1)
    ├── ApiError        the API answered with a problem: "<status> <title>: <detail>" (1)
    └── JobUnsuccessful the job waited for ended without succeeding (1)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from jobs.settings import Secret

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_FAILED = 1
EXIT_USAGE = 2
DOWNLOAD_CHUNK = 1 << 20
#: Seconds to connect to the API, and to wait for each read from it.
CONNECT_SECONDS = 10
READ_SECONDS = 60

# The API's JSON as decoded: a job (models.JobOut) and a timeline entry (models.EventOut).
Job = dict[str, Any]
Event = dict[str, Any]


class CliError(Exception):
    """The command cannot go on; the message is printed as one line."""

    exit_status = EXIT_FAILED


class UsageError(CliError):
    """A setting or argument is missing or malformed."""

    exit_status = EXIT_USAGE


class Unreachable(CliError):
    """Nothing answers at the URL, or the connection broke."""


class ApiError(CliError):
    """The API answered with an error; the message holds its status, title and detail."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status


class JobUnsuccessful(CliError):
    """The job waited for failed, was canceled or expired."""


@dataclass(frozen=True)
class Connection:
    """Where the API is and whose token to send: the flags, else the environment."""

    url: str
    token: Secret

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
        """Read ``--url``/``--token``, then ``HANDOVER_URL``/``HANDOVER_TOKEN``."""
        source = "--url" if args.url else "HANDOVER_URL"
        url = (args.url or environ.get("HANDOVER_URL") or DEFAULT_URL).rstrip("/")
        from yarl import URL  # imported by the commands that call the API: see open_client

        try:
            parsed = URL(url)
        except ValueError:
            parsed = URL()
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            raise UsageError(f"{source}: {url!r} is not an http:// or https:// URL")
        token = (args.token or environ.get("HANDOVER_TOKEN") or "").strip()
        if not token:
            raise UsageError(
                "HANDOVER_TOKEN: not set; set it (or --token) to a bearer token, "
                "e.g. from `handover token --sub NAME --role support`"
            )
        return cls(url, Secret(token))


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(exc)


async def _raise_for_problem(response: aiohttp.ClientResponse) -> None:
    """Raise :class:`ApiError` for an error response, from its problem+json if it has one."""
    if response.status < 400:
        return
    text = await response.text(errors="replace")
    title, detail = response.reason or "Error", _one_line(text)
    with contextlib.suppress(ValueError):
        problem = orjson.loads(text)
        if isinstance(problem, dict):
            title = str(problem.get("title") or title)
            detail = _one_line(str(problem.get("detail") or ""))
    raise ApiError(response.status, title, detail)


class ApiClient:
    """The API's operations the commands use; transport failures become :class:`CliError`."""

    def __init__(self, session: aiohttp.ClientSession, connection: Connection) -> None:
        self.session = session
        self.base = connection.url
        self._auth = {"Authorization": f"Bearer {connection.token.reveal()}"}

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, url: str | URL, *, auth: bool = True, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {**(self._auth if auth else {}), **kwargs.pop("headers", {})}
        import aiohttp  # loaded already: the session is aiohttp's (see open_client)
        from yarl import URL

        origin = self.base if auth else str(URL(url).origin())
        try:
            async with self.session.request(
                method, url, headers=headers, allow_redirects=False, **kwargs
            ) as response:
                yield response
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot reach {origin}: {_connect_reason(exc)}") from None
        except aiohttp.ClientError as exc:
            reason = _one_line(str(exc)) or type(exc).__name__
            raise Unreachable(f"lost the connection to {origin}: {reason}") from None
        except TimeoutError:
            raise Unreachable(f"no answer from {origin} within {READ_SECONDS:g}s") from None

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON answer of one API call; :class:`ApiError` for an error."""
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self._request(
            method, self.base + path, params=params, data=data, headers=headers
        ) as response:
            await _raise_for_problem(response)
            return orjson.loads(await response.read())

    async def fetch(self, path: str) -> bytes:
        """The raw body of a ``GET`` (CSV, HTML); :class:`ApiError` for an error."""
        async with self._request("GET", self.base + path) as response:
            await _raise_for_problem(response)
            return await response.read()

    async def upload(self, path: str, source: Path, content_type: str = "text/plain") -> Any:
        """POST the file ``source`` as the body, streamed; the decoded JSON answer."""
        try:
            handle = await asyncio.to_thread(source.open, "rb")
        except OSError as exc:
            raise CliError(f"{source}: cannot read it: {exc.strerror or exc}") from None
        try:
            async with self._request(
                "POST", self.base + path, data=handle, headers={"Content-Type": content_type}
            ) as response:
                await _raise_for_problem(response)
                return orjson.loads(await response.read())
        finally:
            await asyncio.to_thread(handle.close)

    async def job(self, job_id: str) -> Job:
        """The job, with its per-connector progress."""
        job: Job = await self.call("GET", job_path(job_id))
        return job

    async def events(self, job_id: str) -> list[Event]:
        """The job's timeline so far, oldest first."""
        answer = await self.call("GET", job_path(job_id, "events"))
        events: list[Event] = answer["events"]
        return events

    async def stream_events(self, job_id: str, after: str | None) -> AsyncGenerator[Event, None]:
        """The job's events after event id ``after``, live, until the server ends the stream."""
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = after
        async with self._request(
            "GET", self.base + job_path(job_id, "events"), headers=headers
        ) as response:
            await _raise_for_problem(response)
            data: list[str] = []
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(" ") else value)
                elif not line and data:
                    yield orjson.loads("\n".join(data))
                    data = []

    async def download(
        self, job_id: str, target: Path, sha256: str | None, crc32: str | None = None
    ) -> int:
        """Follow the job's download link into ``target``; returns its size.

        The link is fetched without the bearer token: it carries its own signature and
        may point at another host. ``target`` appears only once complete and only if
        the bytes have the ``sha256`` and the ``crc32`` (8 hex digits) given, if any.
        """
        async with self._request("GET", self.base + job_path(job_id, "download")) as response:
            await _raise_for_problem(response)
            location = response.headers.get("Location")
        if location is None:
            raise ApiError(response.status, "No download link", "the answer had no Location")
        from yarl import URL  # loaded already, with aiohttp (see open_client)

        link = URL(location, encoded=True)
        if not link.is_absolute():
            link = URL(self.base).join(link)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        checksum = 0
        size = 0
        try:
            async with self._request("GET", link, auth=False) as response:
                await _raise_for_problem(response)
                out = await asyncio.to_thread(partial.open, "wb")
                try:
                    async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                        digest.update(chunk)
                        checksum = zlib.crc32(chunk, checksum)
                        size += len(chunk)
                        await asyncio.to_thread(out.write, chunk)
                finally:
                    await asyncio.to_thread(out.close)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise CliError(
                    f"{target}: the download's SHA-256 {digest.hexdigest()} is not the "
                    f"archive's {sha256}; nothing saved"
                )
            if crc32 is not None and f"{checksum:08x}" != crc32:
                raise CliError(
                    f"{target}: the download's CRC-32 {checksum:08x} is not the "
                    f"archive's {crc32}; nothing saved"
                )
        except OSError as exc:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise CliError(f"{target}: cannot write it: {exc.strerror or exc}") from None
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        await asyncio.to_thread(partial.replace, target)
        return size


@contextlib.asynccontextmanager
async def open_client(connection: Connection) -> AsyncIterator[ApiClient]:
    """An :class:`ApiClient` over a session of its own, closed on the way out.

    aiohttp (and its yarl) is imported here, by the commands that call the API: the
    other commands (a ``handover worker`` among them) never load it.
    """
    import aiohttp

    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_SECONDS, sock_read=READ_SECONDS
    )
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield ApiClient(session, connection)


def job_path(job_id: str, action: str = "") -> str:
    """The API path of a job, or of one of its sub-resources."""
    path = f"/v1/jobs/{quote(job_id, safe='')}"
    return f"{path}/{action}" if action else path
