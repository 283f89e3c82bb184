"""Fault injection for the reliability tests: a Redis that can be killed and restarted,
a Redis proxy that cuts a connection at a chosen command, an S3 proxy that fails on
purpose, and worker processes that can be killed
(:mod:`tests.crashing` has a connector that dies in the middle of an erasure).

Everything runs on 127.0.0.1, bounded in count and time, and stops with the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from aiohttp import ClientSession, web
from redis.asyncio.connection import AbstractConnection

from jobs.kinds import build_pipelines
from jobs.leases import Leases
from jobs.model import Job
from jobs.resources import NAMESPACE, Resources
from jobs.worker import watchdog
from tests.conftest import REDIS_URL, free_port, wait_for_port
from tests.polling import eventually

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


def on_a_tiny_disk(directory: Path, size: str = "64k") -> tuple[str, ...]:
    """A command prefix: the command runs with a fresh tmpfs of ``size`` on ``directory``.

    unshare(1) gives it its own user and mount namespaces, so no root is needed and
    the mount is gone with the process; only the command sees the tiny disk.
    """
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    namespaces = ("unshare", "--user", "--map-root-user", "--mount")
    return (*namespaces, "sh", "-c", script, "sh", size, str(directory))


class RedisServer:
    """A private redis-server with AOF (fsync always), so a restart keeps every job."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make test` installs it")
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
                str(self.directory),
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 20)

    def kill(self) -> None:
        """Crash it: SIGKILL, no chance to flush anything more."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class S3FaultProxy:
    """Forwards S3 requests to the real (moto) server, failing some on purpose.

    ``fail_ratio`` of requests get a 500 InternalError or 503 SlowDown, chosen by
    a seeded random generator; during an outage every request gets a 503. Paths are
    ``/<bucket>/<key>``: requests under ``unavailable`` get a 500 InternalError (not a
    throttling 503, which slows botocore's adaptive client down), under ``deny`` a
    403 AccessDenied; an object written under ``forget`` is deleted upstream as soon
    as its write succeeds, as if the store had restarted empty (``forgotten`` counts).
    """

    def __init__(
        self,
        upstream: str,
        *,
        fail_ratio: float = 0.0,
        seed: int = 1,
        unavailable: str | None = None,
        deny: str | None = None,
        forget: str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail_ratio = fail_ratio
        self.unavailable = unavailable
        self.deny = deny
        self.forget = forget
        self.forgotten = 0
        self.outage = False
        self.random = random.Random(seed)
        self.requests = 0
        self.failed = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._session = ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _under(self, prefix: str | None, request: web.Request) -> bool:
        return prefix is not None and request.path.startswith(prefix)

    def _writes_object(self, request: web.Request) -> bool:
        """A PUT of a whole object, or the POST that completes a multipart upload."""
        if request.method == "PUT":
            return "partNumber" not in request.query and "x-amz-copy-source" not in request.headers
        return request.method == "POST" and "uploadId" in request.query

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if self._under(self.deny, request):
            self.failed += 1
            return web.Response(status=403, body=ACCESS_DENIED, content_type="application/xml")
        if self._under(self.unavailable, request):
            self.failed += 1
            return web.Response(status=500, body=INTERNAL, content_type="application/xml")
        if self.outage or self.random.random() < self.fail_ratio:
            self.failed += 1
            status, text = (
                (503, SLOW_DOWN) if self.outage or self.random.random() < 0.5 else (500, INTERNAL)
            )
            return web.Response(status=status, body=text, content_type="application/xml")
        assert self._session is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in {"content-length", "transfer-encoding"}
        }
        async with self._session.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            skip = {"content-length", "transfer-encoding", "content-encoding", "connection"}
            reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in skip}
            status = upstream.status
        if status == 200 and self._under(self.forget, request) and self._writes_object(request):
            bucket, key = request.path.removeprefix("/").split("/", 1)
            client = boto3.client("s3", endpoint_url=self.upstream)
            await asyncio.to_thread(client.delete_object, Bucket=bucket, Key=key)
            self.forgotten += 1
        return web.Response(status=status, body=payload, headers=reply_headers)


class HandoverProcess:
    """A ``handover`` command in its own process, the way production runs it."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        args: tuple[str, ...] = ("worker",),
        *,
        logs_only: bool = False,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """Start it; its logs (stderr) go to ``log``, and its stdout too unless ``logs_only``.

        ``prefix`` comes before the command (e.g. :func:`on_a_tiny_disk`).
        """
        self.log = log
        self._handle = log.open("ab")
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "service.cli", *args],
            env=env,
            stdout=subprocess.DEVNULL if logs_only else self._handle,
            stderr=self._handle,
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is."""
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._handle.close()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as an orchestrator stopping it; returns its exit code."""
        self.popen.terminate()
        code = self.popen.wait(timeout=timeout)
        self._handle.close()
        return code


def worker_env(config: Path, data_dir: Path) -> dict[str, str]:
    """The environment of the ``handover worker`` processes a crash test runs and kills:
    this one's without its ``HANDOVER_*``, the test Redis, erasures without a grace
    period, and a 50 ms poll of the queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env.update(
        HANDOVER_CONFIG=str(config),
        HANDOVER_REDIS_URL=REDIS_URL,
        HANDOVER_DATA_DIR=str(data_dir),
        HANDOVER_JWT_SECRET="journal-secret-" + "j" * 40,
        HANDOVER_ERASURE_GRACE="0s",
        HANDOVER_WORKER_POLL_DELAY="50ms",
    )
    return env


@contextlib.contextmanager
def killed_at_the_end(workers: list[HandoverProcess]) -> Iterator[None]:
    """Every one of ``workers`` (the test adds them as it starts them) still running when
    the block ends, however it ends, is killed."""
    try:
        yield
    finally:
        for worker in workers:
            if worker.alive:
                worker.kill()


async def died(worker: HandoverProcess, what: str) -> None:
    """Once ``worker`` has exited (killed where the test arranged it)."""
    await eventually(
        lambda: worker.popen.poll(),
        until=lambda code: code is not None,
        timeout=60,
        what=what,
        diagnose=lambda: worker.log.read_text()[-2000:],
    )


async def another_worker_takes_over(
    resources: Resources, env: dict[str, str], log: Path
) -> HandoverProcess:
    """After a worker died mid-job: the watchdog, as it runs once the dead worker's lease
    has expired, queues its work again, and a new worker (logging to ``log``) starts."""
    late = Leases(resources.redis, NAMESPACE, clock=lambda: time.time() + 3600)
    watched = dataclasses.replace(resources, leases=late)
    assert await watchdog({"handover_pipelines": build_pipelines(watched)}) >= 1
    return HandoverProcess(env, log, logs_only=True)


async def ended(resources: Resources, job_id: str, workers: list[HandoverProcess]) -> Job:
    """The job once it has ended (the workers' logs said if it never does)."""
    return await eventually(
        lambda: resources.store.get(job_id),
        until=lambda job: job.status.terminal,
        timeout=60,
        what=f"job {job_id} to end",
        diagnose=lambda: "\n".join(w.log.read_text()[-2000:] for w in workers),
    )


def _command(buffer: bytearray) -> bytes | None:
    """The first whole RESP command in ``buffer``, taken out of it; ``None`` if incomplete."""
    if not buffer:
        return None
    if not buffer.startswith(b"*"):
        raise AssertionError(f"not a RESP array: {bytes(buffer[:40])!r}")
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    at = end + 2
    for _ in range(int(buffer[1:end])):
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        length = int(buffer[at + 1 : line_end])
        at = line_end + 2 + length + 2
        if at > len(buffer):
            return None
    command = bytes(buffer[:at])
    del buffer[:at]
    return command


@dataclass
class CuttingProxy:
    """Forwards whole commands to Redis; once armed, at command ``cut_at`` the connection fails.

    Commands are counted from :meth:`arm`. ``lost``: that command never reaches Redis;
    otherwise Redis runs it and its answer never comes back. With ``stay_down``, every
    later connection is refused at once, until :meth:`disarm`.
    """

    upstream_port: int
    port: int = 0
    armed: bool = False
    cut_at: int = 0
    lost: bool = True
    stay_down: bool = True
    commands: int = 0
    cut: bool = False
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def arm(self, cut_at: int, *, lost: bool, stay_down: bool) -> None:
        self.armed, self.cut, self.commands = True, False, 0
        self.cut_at, self.lost, self.stay_down = cut_at, lost, stay_down

    def disarm(self) -> None:
        self.armed = False

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.armed and self.cut and self.stay_down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        answering = asyncio.create_task(self._answers(up_reader, writer))
        self._tasks.add(answering)
        buffer = bytearray()
        try:
            while data := await reader.read(65536):
                buffer += data
                while (command := _command(buffer)) is not None:
                    if self.armed and self.commands == self.cut_at and not self.cut:
                        self.cut = True
                        if not self.lost:
                            answering.cancel()  # Redis runs it; nobody hears the answer
                            up_writer.write(command)
                            await up_writer.drain()
                        return
                    self.commands += self.armed
                    up_writer.write(command)
                await up_writer.drain()
        finally:
            answering.cancel()
            writer.close()
            up_writer.close()

    async def _answers(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await up_reader.read(65536):
            writer.write(data)
            await writer.drain()


async def cutting_proxy(stack: contextlib.AsyncExitStack) -> tuple[CuttingProxy, str]:
    """A :class:`CuttingProxy` in front of the test Redis, stopped with ``stack``, and the
    URL of the test database through it."""
    proxy = CuttingProxy(int(REDIS_URL.split(":")[2].split("/")[0]))
    await proxy.start()
    stack.push_async_callback(proxy.stop)
    return proxy, f"redis://127.0.0.1:{proxy.port}/{REDIS_URL.rsplit('/', 1)[1]}"


@dataclass
class RoundTrips:
    """Commands, pipelines and scripts sent to Redis: a round trip each."""

    count: int = 0


@contextlib.contextmanager
def counting_round_trips() -> Iterator[RoundTrips]:
    """Count the round trips to Redis any client of this process makes inside the block."""
    trips = RoundTrips()
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        trips.count += 1
        await send(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
