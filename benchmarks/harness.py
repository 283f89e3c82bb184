"""What every benchmark shares: processes, Redis, moto, peak RSS, medians and tables.

Benchmarks are plain scripts. Each starts the processes it needs (moto's S3
server, ``handover`` workers and APIs, load generators) through a
:class:`ProcessGroup`, which stops every one of them by its pid when the
benchmark ends, however it ends. Everything listens on 127.0.0.1; Redis is the
shared server's database 7 (:data:`REDIS_URL`), flushed before use, or the one
``HANDOVER_BENCH_REDIS_URL`` names (so that two benchmarks run at once do not flush
each other's data). Every wait is bounded by a deadline, so a benchmark fails with a
message instead of hanging.

Each benchmark produces one :class:`Table`. Run alone, a script prints its table
and rewrites its own section of ``BENCHMARKS.md``; ``run.py`` runs them all and
rewrites the whole file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
import redis
from arq.connections import ArqRedis

from jobs.queue import connect

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
REDIS_URL = os.environ.get("HANDOVER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
JWT_SECRET = "benchmark-secret-benchmark-secret-0123456789"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(AWS_ENV)  # this process talks to moto too
WORKER_HEALTH_KEY = "handover:worker:health"
MB = 1_000_000


class BenchmarkError(Exception):
    """A benchmark could not measure what it set out to; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def median(values: Sequence[float]) -> float:
    """The median of the repeats (what every table reports)."""
    return float(statistics.median(values))


def base_environment(**handover: str) -> dict[str, str]:
    """This environment minus any ``HANDOVER_*``, plus moto's credentials and ``handover``.

    ``handover`` maps setting names (``redis_url``) to values; they become ``HANDOVER_*``.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    environ.update(AWS_ENV)
    environ.update({f"HANDOVER_{name.upper()}": value for name, value in handover.items()})
    return environ


@dataclass(frozen=True)
class Ended:
    """How a process ended: exit code, peak RSS and CPU seconds used.

    The peak is the process's own ``VmHWM`` (``/proc/<pid>/status``), last read while it
    ran: not ``wait4``'s ``ru_maxrss``, which Linux starts, at ``exec``, from the peak of
    the memory the process replaced, and a child started by ``vfork`` (as
    ``subprocess`` does) replaces its parent's: every child would read at least this
    benchmark process's own peak. ``ru_maxrss`` only where ``/proc`` could not be read.
    """

    exit_code: int
    peak_rss_mb: float
    cpu_seconds: float


class Process:
    """A child process started by a :class:`ProcessGroup`; its stderr goes to a log file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.ended: Ended | None = None
        self._peak_kb = 0  # the largest VmHWM read while it ran

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process still runs (reaping it, with its figures, if it has ended)."""
        return self.ended is None and self._reap() is None

    def _read_peak(self) -> None:
        """Note the process's ``VmHWM`` (see :class:`Ended`), while it has one."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self._peak_kb = max(self._peak_kb, int(line.split()[1]))
                return

    def _reap(self) -> Ended | None:
        self._read_peak()
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if not pid:
            return None
        code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = code
        peak_kb = self._peak_kb or usage.ru_maxrss
        self.ended = Ended(code, peak_kb / 1024, usage.ru_utime + usage.ru_stime)
        return self.ended

    def log_tail(self, limit: int = 3000) -> str:
        """The end of what the process wrote to stderr."""
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        """User plus system CPU time the running process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def wait(self, timeout: float) -> Ended:
        """Wait up to ``timeout`` seconds for the process to exit by itself, and reap it."""
        if self.ended is not None:
            return self.ended
        deadline = time.monotonic() + timeout
        while True:
            ended = self._reap()
            if ended is not None:
                return ended
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.name} (pid {self.pid}) still runs after {timeout}s")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> Ended:
        """SIGTERM, then SIGKILL if it lingers past ``timeout``; returns how it ended."""
        if self.ended is not None:
            return self.ended
        self._read_peak()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            return self.wait(timeout)
        except BenchmarkError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            return self.wait(10)


class ProcessGroup:
    """Starts child processes and stops every one still running when the block ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[Process] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(timeout=15)

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        stdout: int | IO[bytes] = subprocess.DEVNULL,
    ) -> Process:
        """Start ``args`` with ``env``; stderr is kept in ``<workdir>/<name>.log``."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                list(args), env=dict(env), stdout=stdout, stderr=handle, cwd=ROOT
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_moto(self) -> str:
        """moto's S3 server in its own process; returns its endpoint URL.

        It keeps HTTP/1.1 connections alive as S3 does (``moto_server.py``): moto's own
        ``python -m moto.server`` closes every connection after one request.
        """
        port = free_port()
        process = self.start(
            "moto",
            [sys.executable, str(BENCH_DIR / "moto_server.py"), str(port)],
            base_environment(),
        )
        wait_for_port(port, process)
        return f"http://127.0.0.1:{port}"


def wait_for_port(port: int, process: Process | None = None, timeout: float = 30.0) -> None:
    """Poll until something accepts connections on ``port``; fail if ``process`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_answers(port):
            return
        if process is not None and not process.alive():
            raise BenchmarkError(f"{process.name} died at start:\n{process.log_tail()}")
        time.sleep(0.05)
    raise BenchmarkError(f"nothing listens on port {port} after {timeout}s")


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    within: float,
    *,
    interval: float = 0.05,
    watch: Sequence[Process] = (),
) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds or if a watched process dies."""
    deadline = time.monotonic() + within
    while not await check():
        for process in watch:
            if not process.alive():
                raise BenchmarkError(f"{process.name} died while {what}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchmarkError(f"gave up after {within}s {what}")
        await asyncio.sleep(interval)


def create_bucket(endpoint: str, name: str) -> None:
    """A bucket on the moto server."""
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def empty_bucket(endpoint: str, name: str) -> None:
    """Delete every object in the bucket (moto keeps them in its memory)."""
    client = boto3.client("s3", endpoint_url=endpoint)
    for _ in range(1000):
        contents = client.list_objects_v2(Bucket=name).get("Contents", [])
        if not contents:
            return
        client.delete_objects(
            Bucket=name,
            Delete={"Objects": [{"Key": item["Key"]} for item in contents], "Quiet": True},
        )


async def fresh_redis() -> ArqRedis:
    """A client of database 7, flushed."""
    try:
        redis = await connect(REDIS_URL)
        await redis.flushdb()
    except Exception as exc:
        raise BenchmarkError(
            f"no Redis at {REDIS_URL} ({exc}); `make services` starts one"
        ) from exc
    return redis


async def start_worker(
    group: ProcessGroup,
    redis: ArqRedis,
    env: Mapping[str, str],
    name: str = "worker",
    within: float = 60.0,
) -> Process:
    """A ``handover worker`` process, returned once it polls the queue (its health key is set).

    Start workers one at a time: they share one health key, written on the first poll.
    """
    await redis.delete(WORKER_HEALTH_KEY)
    process = group.start(name, [sys.executable, "-m", "service.cli", "worker"], env)

    async def polling() -> bool:
        return bool(await redis.exists(WORKER_HEALTH_KEY))

    await wait_until(polling, f"waiting for {name} to start", within, watch=[process])
    return process


def redis_cpu_seconds() -> float:
    """CPU seconds the Redis server of :data:`REDIS_URL` has used so far (``INFO cpu``)."""
    with redis.Redis.from_url(REDIS_URL) as client:
        info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def sixteen_cores(per_unit: Mapping[str, float], scaled: str, unit: str) -> str:
    """What one figure would be on a 16-core machine, from each process's CPU per unit.

    ``per_unit`` maps each process to its CPU seconds per request or job; ``scaled``
    names the one that runs as many processes as there are cores left (API, worker);
    every other one is a single process with one core of its own (Redis, moto).
    """
    single = {name: cpu for name, cpu in per_unit.items() if name != scaled}
    cores = 16 - len(single)
    limits = {scaled: cores / per_unit[scaled], **{n: 1 / cpu for n, cpu in single.items()}}
    first = min(limits, key=lambda name: limits[name])
    shown = ", ".join(f"{name} {cpu * 1e6:,.0f} µs" for name, cpu in per_unit.items())
    return (
        f"On 16 cores (CPU per {unit} measured here: {shown}): {cores} {scaled} processes "
        f"could do {limits[scaled]:,.0f} {unit}s/s; "
        + "; ".join(f"one {n} process saturates at {limits[n]:,.0f}/s" for n in single)
        + f". So about {limits[first]:,.0f} {unit}s/s, and {first} saturates first."
    )


def process_peak_rss_mb() -> float:
    """This process's own peak RSS so far: its ``VmHWM`` (``ru_maxrss`` would start from
    the peak of the process that started it: see :class:`Ended`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if found:
            model = found.group(1).strip()
    load = os.getloadavg()
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": f"{load[0]:.2f}",
    }


@dataclass
class Table:
    """One benchmark's results: rows of figures, each beside its reference and target."""

    key: str
    title: str
    intro: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    command: str = ""
    machine: dict[str, str] = field(default_factory=machine)
    seconds: float = 0.0

    def markdown(self) -> str:
        """The table as a section of BENCHMARKS.md, between markers that name it."""
        m = self.machine
        lines = [
            f"<!-- bench:{self.key} -->",
            f"## {self.title}",
            "",
            self.intro,
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
            *("| " + " | ".join(row) + " |" for row in self.rows),
            "",
            *(f"- {note}" for note in self.notes),
            "",
            f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), {m['python']}, "
            f"load average {m['load']} at start, {m.get('load_end', '?')} at end; "
            f"took {self.seconds:.0f} s: `{self.command}`",
            f"<!-- /bench:{self.key} -->",
        ]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The table as JSON, for run.py."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Table:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def verdict(ok: bool) -> str:
    """The mark beside a figure that meets (or misses) its target."""
    return "✅ met" if ok else "❌ missed"


PREAMBLE = """# Benchmarks

Written by `make bench` (`benchmarks/run.py`); each section also by its own script
(`python benchmarks/<name>_bench.py`). Every figure is a median of repeats, beside its
reference measured in the same run, and its target (issue 9).

The machine (2 cores) is shared with other engineers' test suites. Each section records
the load average at its start and end: when it is well above 2, absolute figures drop,
latencies most of all (by several times), so read each figure against its same-run
reference.
"""


def replace_section(document: str, table: Table) -> str:
    """``document`` with ``table``'s section replaced (or appended)."""
    pattern = re.compile(
        rf"<!-- bench:{re.escape(table.key)} -->.*?<!-- /bench:{re.escape(table.key)} -->",
        re.DOTALL,
    )
    section = table.markdown()
    if pattern.search(document):
        return pattern.sub(lambda _: section, document)
    return document.rstrip("\n") + "\n\n" + section + "\n"


def benchmark_main(
    key: str,
    measure: Callable[[argparse.Namespace, Path], Coroutine[Any, Any, Table]],
    description: str,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """The command line of one benchmark script.

    Alone: print the table and rewrite its section of BENCHMARKS.md. With
    ``--json FILE`` (how run.py calls it): write the table there instead.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, help="write the table as JSON here (for run.py)")
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    # Stopped from outside (run.py's time limit): unwind, so every child process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{key}: stopped by SIGTERM"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"handover-bench-{key}-") as workdir:
        table = asyncio.run(measure(args, Path(workdir)))
    table.seconds = time.monotonic() - started
    table.machine["load_end"] = f"{os.getloadavg()[0]:.2f}"
    if not table.command:
        shown = [arg for arg in sys.argv[1:] if not arg.startswith("--json")]
        table.command = shlex.join(
            [".venv/bin/python", f"benchmarks/{Path(sys.argv[0]).name}", *shown]
        )
    if args.json is not None:
        args.json.write_text(table.to_json())
        return
    print(table.markdown())
    document = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else PREAMBLE
    BENCHMARKS_MD.write_text(replace_section(document, table))


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """``with timer() as elapsed: ...; elapsed()`` in seconds."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def child_result(args: Sequence[str], env: Mapping[str, str], timeout: float) -> tuple[Any, Ended]:
    """Run a Python child that prints one JSON value; returns it and how the child ended."""
    with tempfile.TemporaryDirectory(prefix="handover-bench-child-") as workdir:
        group = ProcessGroup(Path(workdir))
        out = Path(workdir) / "out.json"
        with group, out.open("wb") as handle:
            process = group.start("child", [sys.executable, *args], env, stdout=handle)
            ended = process.wait(timeout)
        if ended.exit_code != 0:
            raise BenchmarkError(f"{shlex.join(args)} failed:\n{process.log_tail()}")
        return json.loads(out.read_text()), ended
