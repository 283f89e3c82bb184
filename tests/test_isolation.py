"""pytest-xdist workers never share a Redis database: each test flushes its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_DATABASES, redis_url, refuse_shared_databases

ROOT = Path(__file__).resolve().parent.parent


def xdist(workers: int) -> dict[str, str]:
    """What pytest-xdist puts in the environment of its workers, beside the database setting."""
    return {"PYTEST_XDIST_WORKER_COUNT": str(workers)}


def test_each_worker_gets_a_database_of_its_own() -> None:
    for workers in range(1, len(TEST_DATABASES) + 1):
        urls = [
            redis_url({**xdist(workers), "PYTEST_XDIST_WORKER": f"gw{n}"}) for n in range(workers)
        ]
        assert len(set(urls)) == workers, urls
        assert all(url.rsplit("/", 1)[1] in map(str, TEST_DATABASES) for url in urls)
    assert redis_url({}) == f"redis://127.0.0.1:6379/{TEST_DATABASES[0]}"


def test_more_workers_than_databases_are_refused() -> None:
    with pytest.raises(pytest.UsageError, match="4 pytest-xdist workers, but the tests have 3"):
        refuse_shared_databases(len(TEST_DATABASES) + 1, {})
    with pytest.raises(pytest.UsageError, match="run with -n 3 or fewer"):
        redis_url({**xdist(5), "PYTEST_XDIST_WORKER": "gw0"})


def test_workers_sharing_the_one_named_database_are_refused() -> None:
    named = {"HANDOVER_TEST_REDIS_URL": "redis://127.0.0.1:6379/6"}
    assert redis_url({**named, **xdist(1)}) == named["HANDOVER_TEST_REDIS_URL"]
    with pytest.raises(pytest.UsageError, match="names one Redis database, which 2 pytest-xdist"):
        redis_url({**named, **xdist(2), "PYTEST_XDIST_WORKER": "gw1"})


@pytest.mark.parametrize(
    ("workers", "named", "says"),
    [
        (5, False, "ERROR: 5 pytest-xdist workers, but the tests have 3 Redis databases"),
        (2, True, "ERROR: HANDOVER_TEST_REDIS_URL names one Redis database, which 2 pytest-xdist"),
    ],
)
def test_a_run_that_would_share_a_database_stops_before_any_worker_starts(
    workers: int, named: bool, says: str
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    environ.pop("HANDOVER_TEST_REDIS_URL", None)
    if named:
        environ["HANDOVER_TEST_REDIS_URL"] = "redis://127.0.0.1:6379/6"
    command = [sys.executable, "-m", "pytest", "-n", str(workers), "tests/test_polling.py"]
    run = subprocess.run(
        [*command, "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert says in run.stderr, run.stderr
    assert "passed" not in run.stdout + run.stderr
