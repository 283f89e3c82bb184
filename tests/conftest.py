"""Shared fixtures: a real Redis server, moto's S3 server over real HTTP, settings and resources.

Redis: ``HANDOVER_TEST_REDIS_URL``, or database 13, 14 or 15 of the local server, one per
pytest-xdist worker; each test gets its database flushed. A run whose workers would share a
database (more than three workers, or more than one on ``HANDOVER_TEST_REDIS_URL``) is refused
before any worker starts. ``make test`` starts a server when none answers. With no server the
tests fail with a message saying so; they never skip.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from arq.connections import ArqRedis

import jobs.export
from connectors.base import Connector
from jobs.queue import connect
from jobs.resources import Resources, open_resources
from jobs.settings import Settings
from jobs.storage.s3 import S3Store
from tests.polling import eventually_sync

#: The local server's databases the tests may flush: one per pytest-xdist worker.
TEST_DATABASES = (13, 14, 15)


def refuse_shared_databases(workers: int, environ: Mapping[str, str]) -> None:
    """Fail when ``workers`` pytest-xdist workers would share a Redis database.

    Every test flushes its database, so two workers on one would delete each other's
    jobs mid-test: failures that look like product bugs.
    """
    if workers <= 1:
        return
    if "HANDOVER_TEST_REDIS_URL" in environ:
        raise pytest.UsageError(
            f"HANDOVER_TEST_REDIS_URL names one Redis database, which {workers} pytest-xdist "
            "workers would share, each flushing it under the others' tests: run without -n, "
            "or unset it so that each worker gets a database of its own"
        )
    if workers > len(TEST_DATABASES):
        databases = ", ".join(map(str, TEST_DATABASES))
        raise pytest.UsageError(
            f"{workers} pytest-xdist workers, but the tests have {len(TEST_DATABASES)} Redis "
            f"databases ({databases}), one per worker: run with -n {len(TEST_DATABASES)} or "
            "fewer, or run without -n on HANDOVER_TEST_REDIS_URL"
        )


def redis_url(environ: Mapping[str, str]) -> str:
    """This process's test Redis: ``HANDOVER_TEST_REDIS_URL``, or its xdist worker's database."""
    refuse_shared_databases(int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), environ)
    if "HANDOVER_TEST_REDIS_URL" in environ:
        return environ["HANDOVER_TEST_REDIS_URL"]
    worker = int(environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return f"redis://127.0.0.1:6379/{TEST_DATABASES[worker]}"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: Sequence[Any]) -> None:
    """Refuse, before any worker starts, a run whose workers would share a Redis database."""
    refuse_shared_databases(len(specs), os.environ)


REDIS_URL = redis_url(os.environ)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(AWS_ENV)


#: The test connectors, registered for the tests only: they are no production connector types.
TEST_CONNECTOR_TYPES = {
    "memory": "connectors.testing:MemoryConnector",
    "synthetic": "connectors.testing:SyntheticConnector",
    "crashing-sql": "tests.crashing:CrashingSqlConnector",
}
TEST_DISTRIBUTION = "handover-test-connectors"


def pytest_configure(config: pytest.Config) -> None:
    """Publish the test connector types, for this process and the processes it starts.

    Entry points come from distributions on the path, so a ``dist-info`` directory
    in a temporary folder adds them; ``PYTHONPATH`` carries it to child processes
    (``handover worker``, ``handover serve``) the tests run.
    """
    folder = Path(tempfile.mkdtemp(prefix="handover-test-connectors-"))
    info = folder / f"{TEST_DISTRIBUTION.replace('-', '_')}-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {TEST_DISTRIBUTION}\nVersion: 0\n"
    )
    lines = [f"{name} = {target}" for name, target in TEST_CONNECTOR_TYPES.items()]
    (info / "entry_points.txt").write_text("[handover.connectors]\n" + "\n".join(lines) + "\n")
    sys.path.append(str(folder))
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked ``slow`` first, the rest in their usual order.

    ``make test`` hands tests to its workers in this order (``--dist worksteal``): a test of
    a minute or more started last would keep the run going while the other workers idle;
    started first, it runs while the others share out everything else.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, deadline_seconds: float = 20.0) -> None:
    """Poll until something accepts connections on ``port``, or fail."""

    def connecting() -> str:
        with socket.socket() as sock:
            code = sock.connect_ex(("127.0.0.1", port))
        return "connected" if code == 0 else errno.errorcode.get(code, str(code))

    eventually_sync(
        connecting,
        until=lambda answer: answer == "connected",
        timeout=deadline_seconds,
        what=f"something to listen on port {port}",
    )


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, in its own process, over real HTTP."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket for this test."""
    name = f"handover-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    """A client of the real Redis server, on a flushed test database."""
    try:
        client = await connect(REDIS_URL)
    except Exception as exc:
        pytest.fail(f"no Redis server at {REDIS_URL} ({exc}); `make test` starts one")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def settings_factory(tmp_path: Path, s3_endpoint: str, bucket: str) -> Callable[..., Settings]:
    """Settings for a test: real Redis, the moto bucket, a temporary data dir."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_endpoint,
            "s3_part_size": 5 * 2**20,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def resources_factory(
    redis: ArqRedis, settings_factory: Callable[..., Settings]
) -> Callable[..., Any]:
    """Opens :class:`Resources` over the test Redis and bucket with the given connectors."""

    def make(connectors: Mapping[str, Connector] | None = None, **overrides: Any) -> Any:
        return open_resources(settings_factory(**overrides), redis=redis, connectors=connectors)

    return make


@pytest.fixture
def finish_reads_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export runs keep nothing they staged (:class:`jobs.export.Kept`): a finish reads
    every staged object from the store, as one finishing in another process does."""
    monkeypatch.setattr(jobs.export, "KEPT_OBJECT", -1)


@pytest.fixture
def s3_store(s3_endpoint: str, bucket: str) -> S3Store:
    """An :class:`S3Store` on the test bucket with the smallest part size S3 allows."""
    return S3Store(bucket, endpoint_url=s3_endpoint, part_size=5 * 2**20)


__all__ = ["Resources", "free_port", "wait_for_port"]
