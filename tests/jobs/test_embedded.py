"""The embedded store: a real redis-server per data dir, durable, with one owner at a time.

The process-level behaviour (SIGKILL, SIGTERM, a server left running) is tested with
``handover serve`` itself in ``tests/service/test_processes.py``; here, the module: a
socket that no other local user can reach or impersonate, and any data dir path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import embedded
from jobs.embedded import EmbeddedStoreError, StoreFiles, embedded_store
from jobs.queue import connect

#: Someone else on the machine (``nobody``).
OTHER_UID = 65534


@pytest.fixture
def short_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory of its own (short enough for sockets), and no XDG_RUNTIME_DIR."""
    folder = Path(tempfile.mkdtemp(prefix="ho-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_what_is_written_is_there_after_a_restart_and_never_evicted(tmp_path: Path) -> None:
    async with embedded_store(tmp_path) as url:
        redis = await connect(url)
        await redis.set("handover:kept", "yes")
        assert await redis.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert await redis.config_get("appendfsync") == {"appendfsync": "always"}
        await redis.aclose()
    assert (tmp_path / "store" / "appendonly.aof").stat().st_size > 0
    async with embedded_store(tmp_path) as url:
        redis = await connect(url)
        assert await redis.get("handover:kept") == b"yes"
        await redis.aclose()


async def test_a_second_owner_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    async with embedded_store(tmp_path):
        with pytest.raises(EmbeddedStoreError) as refused:
            async with embedded_store(tmp_path):
                pass
    assert str(refused.value).startswith(f"HANDOVER_DATA_DIR: {tmp_path} is in use by a running")
    async with embedded_store(tmp_path):
        pass  # the lock went with its owner


async def test_a_data_dir_too_long_for_a_socket_gets_one_in_a_directory_of_its_users(
    tmp_path: Path, short_tmp: Path
) -> None:
    data_dir = tmp_path / ("d" * 120)
    files = StoreFiles(data_dir)
    private = short_tmp / f"handover-{os.getuid()}"
    assert files.socket.parent == private
    assert files.socket == StoreFiles(data_dir).socket, "the same data dir, the same socket"
    async with embedded_store(data_dir) as url:
        assert url == f"unix://{files.socket}"
        redis = await connect(url)
        assert await redis.ping()
        await redis.aclose()
        assert private.stat().st_mode & 0o777 == 0o700
    assert not files.socket.exists()


def test_the_runtime_directory_is_used_when_it_is_the_users_own(
    tmp_path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = short_tmp / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    data_dir = tmp_path / ("d" * 120)
    assert StoreFiles(data_dir).socket.parent == runtime
    runtime.chmod(0o755)  # open to others: not used
    assert StoreFiles(data_dir).socket.parent == short_tmp / f"handover-{os.getuid()}"


@pytest.mark.parametrize("made_by", ["another user", "a symlink", "open to others"])
async def test_a_socket_directory_someone_else_could_reach_is_refused(
    tmp_path: Path, short_tmp: Path, made_by: str
) -> None:
    """Another local user who made ``handover-<uid>`` first could put a socket of theirs
    in it: the store refuses to start, in one line, and touches nothing there."""
    private = short_tmp / f"handover-{os.getuid()}"
    if made_by == "a symlink":
        elsewhere = short_tmp / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        private.symlink_to(elsewhere)
    else:
        private.mkdir(mode=0o700)
        if made_by == "another user":
            if os.getuid() != 0:
                pytest.fail("making a directory another user owns needs root (the CI runs as root)")
            os.chown(private, OTHER_UID, OTHER_UID)
        else:
            private.chmod(0o777)
    data_dir = tmp_path / ("d" * 120)
    with pytest.raises(EmbeddedStoreError) as refused:
        async with embedded_store(data_dir):
            pass
    message = str(refused.value)
    assert message.startswith("HANDOVER_DATA_DIR: its path is too long for a socket, and ")
    assert f"{private}, where the socket would go, is not a private directory" in message
    assert "\n" not in message


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process that has nothing to do with Handover's store."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait(timeout=10)


async def impostor(socket: Path, pid: int) -> asyncio.Server:
    """A server on ``socket`` that answers every command as Redis would, and INFO naming
    ``pid`` as its process: what a leftover server seems to be, and is not."""
    info = f"# Server\r\nredis_version:6.2.0\r\nprocess_id:{pid}\r\n".encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            if not line.startswith(b"*"):
                continue
            words = [await _bulk(reader) for _ in range(int(line[1:]))]
            if words[0].upper() == b"INFO":
                writer.write(b"$%d\r\n%s\r\n" % (len(info), info))
            else:
                writer.write(b"+OK\r\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path=str(socket))


async def _bulk(reader: asyncio.StreamReader) -> bytes:
    size = int((await reader.readline())[1:])
    return (await reader.readexactly(size + 2))[:-2]


async def test_a_process_named_by_whatever_answers_on_the_socket_is_never_killed(
    tmp_path: Path, bystander: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "LEFTOVER_GRACE", 0.2)
    files = StoreFiles(tmp_path)
    files.directory.mkdir(mode=0o700)
    server = await impostor(files.socket, bystander.pid)
    try:
        with pytest.raises(EmbeddedStoreError) as refused:
            async with embedded_store(tmp_path):
                pass
    finally:
        server.close()
        await server.wait_closed()
    assert bystander.poll() is None, "a process no redis-server on our socket was killed"
    message = str(refused.value)
    assert (
        f"(pid {bystander.pid}), but that process is no redis-server on it: not killed" in message
    )


@pytest.mark.parametrize("name", ['quoted "data" dir', "back\\slash", "new\nline"])
async def test_a_data_dir_path_with_quotes_backslashes_or_newlines_works(
    tmp_path: Path, short_tmp: Path, name: str
) -> None:
    data_dir = tmp_path / name
    async with embedded_store(data_dir) as url:
        redis = await connect(url)
        await redis.set("handover:kept", "yes")
        assert await redis.config_get("dir") == {"dir": str(data_dir / "store")}
        await redis.aclose()
    assert (data_dir / "store" / "appendonly.aof").stat().st_size > 0


async def test_a_server_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "appendonly.aof").write_bytes(b"this is no append-only file\n")
    with pytest.raises(EmbeddedStoreError) as failed:
        async with embedded_store(tmp_path):
            pass
    message = str(failed.value)
    assert message.startswith(f"HANDOVER_DATA_DIR: the embedded store in {store} did not start")
    assert "\n" not in message
    assert "append only file" in message.lower(), message
