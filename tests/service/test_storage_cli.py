"""``handover storage reconcile``, run as a real process the way an operator runs it.

On the local store (objects aged by setting their files' times) and on moto's S3: the
job folders of lost jobs older than ``--min-age`` are deleted and named, a dry run
deletes nothing, young folders and existing jobs' stay. Without Redis, or on a Redis
without an epoch marker, it refuses in one line and deletes nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis

from connectors.testing import MemoryConnector
from jobs.epoch import Epochs
from jobs.ids import new_ulid
from jobs.storage.local import LocalStore
from tests.conftest import REDIS_URL, free_port
from tests.jobs.test_reconcile import Layout


def handover(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def reconcile(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(handover, "storage", "reconcile", *args, env=env)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def age(store: LocalStore, prefix: str, by_seconds: float) -> None:
    """Make every object under ``prefix`` look written ``by_seconds`` ago."""
    then = time.time() - by_seconds
    for path in (store.root / prefix).rglob("*"):
        os.utime(path, (then, then))


async def test_reconcile_on_the_local_store(
    resources_factory: Callable[..., Any], tmp_path: Path
) -> None:
    env = {"HANDOVER_REDIS_URL": REDIS_URL, "HANDOVER_DATA_DIR": str(tmp_path / "data")}
    async with resources_factory({"crm": MemoryConnector("crm")}, s3_bucket=None) as resources:
        store = resources.storage
        assert isinstance(store, LocalStore)
        await Epochs(resources.redis, resources.store.ns).begin()
        layout = Layout(resources)
        await layout.write()
        young = new_ulid()
        await store.put(resources.archive_key(young), b"lost just now")
        for area in ("archives", "staging"):
            age(store, f"{resources.prefix}{area}/{layout.lost_export}", 2 * 3600)
            age(store, f"{resources.prefix}{area}/{layout.job_id}", 2 * 3600)
        age(store, f"{resources.prefix}staging/{layout.lost_run}", 2 * 3600)
        everything = await layout.keys()

        dry = await reconcile("--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[0] == (
            f"would delete archives of 1 job(s) (1 object(s)): {layout.lost_export}"
        )
        assert f"kept 1 folder(s) without a job, younger than 1h: {young} (archives)" in dry.stdout
        assert await layout.keys() == everything

        done = await reconcile(env=env)
        assert done.returncode == 0, done.stderr
        both = ", ".join(sorted([layout.lost_export, layout.lost_run]))
        assert done.stdout.splitlines()[:2] == [
            f"deleted archives of 1 job(s) (1 object(s)): {layout.lost_export}",
            f"deleted staged parts of 2 job(s) (4 object(s)): {both}",
        ]
        assert await layout.keys() == layout.owned() | {resources.archive_key(young)}
        entries = await resources.audit.entries()
        assert len(entries) == 3
        assert {(e["actor"], e["action"]) for e in entries} == {("cli", "storage.orphans_deleted")}


async def test_reconcile_on_s3_with_a_shorter_delay(
    resources_factory: Callable[..., Any], s3_endpoint: str, bucket: str
) -> None:
    env = {
        "HANDOVER_REDIS_URL": REDIS_URL,
        "HANDOVER_S3_BUCKET": bucket,
        "HANDOVER_S3_ENDPOINT_URL": s3_endpoint,
    }
    async with resources_factory({"crm": MemoryConnector("crm")}) as resources:
        await Epochs(resources.redis, resources.store.ns).begin()
        layout = Layout(resources)
        await layout.write()
        kept = await reconcile(env=env)
        assert kept.returncode == 0, kept.stderr
        assert kept.stdout.startswith("nothing to delete")
        assert len(await layout.keys()) == 10

        done = await reconcile("--min-age", "0s", env=env)
        assert done.returncode == 0, done.stderr
        assert f"deleted archives of 1 job(s) (1 object(s)): {layout.lost_export}" in done.stdout
        assert await layout.keys() == layout.owned()


async def test_reconcile_refuses_without_redis_or_an_epoch_marker(
    resources_factory: Callable[..., Any], redis: ArqRedis, tmp_path: Path
) -> None:
    data = {"HANDOVER_DATA_DIR": str(tmp_path / "data")}
    async with resources_factory({"crm": MemoryConnector("crm")}, s3_bucket=None) as resources:
        layout = Layout(resources)
        await layout.write()
    everything = await layout.keys()

    away = await reconcile(
        "--min-age", "0s", env={**data, "HANDOVER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    )
    assert away.returncode == 1
    line = one_line(away)
    assert line.startswith("handover: storage reconcile: HANDOVER_REDIS_URL: Redis at 127.0.0.1:")
    assert line.endswith("; nothing deleted")
    assert away.stdout == ""

    await redis.flushdb()
    unmarked = await reconcile("--min-age", "0s", env={**data, "HANDOVER_REDIS_URL": REDIS_URL})
    assert unmarked.returncode == 1
    assert one_line(unmarked).startswith("handover: storage reconcile: Redis holds no epoch marker")
    assert await layout.keys() == everything


def test_reconcile_names_a_bad_argument_or_setting() -> None:
    bad = handover(
        "storage", "reconcile", "--min-age", "soon", env={"HANDOVER_REDIS_URL": REDIS_URL}
    )
    assert bad.returncode == 2
    assert one_line(bad).startswith("handover: --min-age: expected a duration")
    unset = handover("storage", "reconcile", env={})
    assert unset.returncode == 2
    assert one_line(unset).startswith("handover: HANDOVER_REDIS_URL: ")
