"""A closed-loop HTTP/1.1 load generator in pure Python, run as its own process.

``connections`` keep-alive connections to 127.0.0.1 each send one request, wait
for the whole response, and send the next, for ``warmup + duration`` seconds.
Requests started during the warm-up are not counted. With several ``--path``
(and ``--repeat``), the runs follow one another over the same connections.
Prints a JSON list, one object per run: requests, req/s, p50/p99 latency (ms),
status counts and the generator's own CPU seconds (to tell whether the server or
the generator was the bottleneck).

It speaks just enough HTTP for the benchmarks: fixed request bytes (except that
``{n}`` in the body becomes a number unique to each request, e.g. to ask about a
new subject each time), responses with ``Content-Length`` (aiohttp sends it for
every ``web.Response``). ``--path-file`` spreads a run over many paths (one a line,
e.g. 10,000 job ids): each request takes the next, in the file's order, cycling.

    python benchmarks/loadgen.py --port 8080 --path /v1/jobs/ID --header "Authorization: Bearer T"
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

Maker = Callable[[], bytes]


class ProtocolError(Exception):
    """The server answered something this generator does not parse."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; :meth:`send` resolves with the response's status."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.expected: int | None = None
        self.status = 0
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expected is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self._fail(ProtocolError(f"no Content-Length in {head[:200]!r}"))
                return
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
            self.expected = end + 4 + length
        if len(self.buffer) >= self.expected:
            del self.buffer[: self.expected]
            self.expected = None
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(self.status)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[int]:
        """Write ``request``; the future resolves with the status of its response."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


def build_request(method: str, path: str, port: int, headers: list[str], body: bytes) -> bytes:
    """The exact bytes every request sends."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def cycling_maker(
    method: str, paths: list[str], port: int, headers: list[str], body: bytes
) -> Maker:
    """What makes each request's bytes when the requests are spread over many paths."""
    requests = itertools.cycle([build_request(method, p, port, headers, body) for p in paths])
    return lambda: next(requests)


def request_maker(method: str, path: str, port: int, headers: list[str], body: bytes) -> Maker:
    """What makes each request's bytes: fixed ones, or with ``{n}`` in the body numbered."""
    if b"{n}" not in body:
        fixed = build_request(method, path, port, headers, body)
        return lambda: fixed
    numbers = itertools.count()
    return lambda: build_request(
        method, path, port, headers, body.replace(b"{n}", str(next(numbers)).encode())
    )


async def generate(
    port: int, makers: list[Maker], connections: int, warmup: float, duration: float
) -> list[dict[str, object]]:
    """Run the load of each request in turn, over the same connections; their figures."""
    loop = asyncio.get_running_loop()
    opened = [
        (await loop.create_connection(Connection, "127.0.0.1", port))[1] for _ in range(connections)
    ]
    try:
        return [await _run(opened, maker, warmup, duration) for maker in makers]
    finally:
        for connection in opened:
            if connection.transport is not None:
                connection.transport.close()


async def _run(
    opened: list[Connection], make_request: Maker, warmup: float, duration: float
) -> dict[str, object]:
    start = time.perf_counter()
    counted_from = start + warmup
    stop_at = counted_from + duration
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()

    async def drive(connection: Connection) -> None:
        while (began := time.perf_counter()) < stop_at:
            status = await connection.send(make_request())
            if began >= counted_from:
                latencies.append(time.perf_counter() - began)
                statuses[status] += 1

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.wait_for(
        asyncio.gather(*(drive(c) for c in opened)), timeout=warmup + duration + 30
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    count = len(latencies)
    if not count:
        raise ProtocolError("no request completed in the measured window")
    return {
        "requests": count,
        "rps": count / duration,
        "p50_ms": latencies[count // 2] * 1000,
        "p99_ms": latencies[min(count - 1, int(count * 0.99))] * 1000,
        "statuses": {str(k): v for k, v in statuses.items()},
        "cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
        "seconds": warmup + duration,
    }


def main() -> None:
    """Parse the arguments, run the loads, print the JSON list of figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", action="append", default=[])
    parser.add_argument("--path-file", type=Path, help="spread one run over these paths")
    parser.add_argument("--repeat", type=int, default=1, help="run every path this many times")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--body-file", type=Path)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    body = args.body_file.read_bytes() if args.body_file else b""
    if not args.path and args.path_file is None:
        parser.error("give --path or --path-file")
    makers = [
        request_maker(args.method, path, args.port, args.header, body)
        for _ in range(args.repeat)
        for path in args.path
    ]
    if args.path_file is not None:
        paths = args.path_file.read_text().split()
        makers += [
            cycling_maker(args.method, paths, args.port, args.header, body)
            for _ in range(args.repeat)
        ]
    figures = asyncio.run(generate(args.port, makers, args.connections, args.warmup, args.duration))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
