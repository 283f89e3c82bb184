"""The embedded store: a real redis-server per data dir, durable, with one owner at a time.

The process-level behaviour (SIGKILL, SIGTERM, a server left running) is tested with
``handover serve`` itself in ``tests/service/test_processes.py``; here, the module.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from jobs.embedded import EmbeddedStoreError, StoreFiles, embedded_store
from jobs.queue import connect


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


async def test_a_data_dir_too_long_for_a_socket_gets_one_in_the_temporary_directory(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ("d" * 120)
    files = StoreFiles(data_dir)
    assert files.socket.parent == Path(tempfile.gettempdir())
    assert files.socket == StoreFiles(data_dir).socket, "the same data dir, the same socket"
    async with embedded_store(data_dir) as url:
        assert url == f"unix://{files.socket}"
        redis = await connect(url)
        assert await redis.ping()
        await redis.aclose()
    assert not files.socket.exists()


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
