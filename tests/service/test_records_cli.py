"""``handover jobs purge``, run as a real process the way an operator runs it.

On the real Redis and moto's S3: a job that ended over ``HANDOVER_RECORD_RETENTION`` ago
(aged by :func:`tests.jobs.test_records.backdate`) is counted by ``--dry-run`` and kept,
then purged with its archive while a recent one stays; ``handover audit verify`` still
finds the chain intact, and ``GET /v1/stats`` gives the same counts after the purge as
before. A retention of ``off`` or a Redis that does not answer each give
one line and a non-zero exit, and purge nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis

from connectors.testing import MemoryConnector
from jobs.commands import Actor, Commands
from jobs.store import JobNotFound
from tests.conftest import REDIS_URL, free_port
from tests.jobs.test_export import drain
from tests.jobs.test_records import RETENTION, backdate, objects_of
from tests.service.conftest import ApiFactory
from tests.service.test_storage_cli import handover, one_line


async def purge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(handover, "jobs", "purge", *args, env=env)


def shared_env(s3_endpoint: str, bucket: str) -> dict[str, str]:
    """What `handover jobs purge` needs to reach the tests' Redis and S3."""
    return {
        "HANDOVER_REDIS_URL": REDIS_URL,
        "HANDOVER_S3_BUCKET": bucket,
        "HANDOVER_S3_ENDPOINT_URL": s3_endpoint,
    }


@pytest.mark.slow
async def test_purge_counts_with_dry_run_then_deletes_old_jobs_only(
    resources_factory: Callable[..., Any], redis: ArqRedis, s3_endpoint: str, bucket: str
) -> None:
    env = shared_env(s3_endpoint, bucket)
    crm = MemoryConnector("crm", records={p: {"contacts": [{"id": p}]} for p in ("alice", "bob")})
    async with resources_factory({"crm": crm}) as resources:
        commands = Commands(resources)
        old = await commands.request_export(Actor("alice", staff=False), subject="alice")
        recent = await commands.request_export(Actor("bob", staff=False), subject="bob")
        await drain(redis, resources)
        await backdate(resources, old.id, RETENTION + timedelta(days=10))  # archive expired too
        assert await objects_of(resources, old.id)

        dry = await purge("--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        lines = dry.stdout.splitlines()
        assert lines[0].startswith("would purge 1 finished job(s) that ended before ")
        assert lines[0].endswith(" UTC (HANDOVER_RECORD_RETENTION 3y): 1 export succeeded")
        assert lines[1:] == ["nothing deleted (dry run)"]
        assert (await resources.store.get(old.id)).id == old.id

        done = await purge(env=env)
        assert done.returncode == 0, done.stderr
        purged = done.stdout.splitlines()[0]  # its cutoff may be a minute on from the dry run's
        assert purged.startswith("purged 1 finished job(s) that ended before ")
        assert purged.endswith(" UTC (HANDOVER_RECORD_RETENTION 3y): 1 export succeeded")
        assert done.stdout.splitlines()[1] == "deleted 1 object(s) of theirs from storage"
        assert old.id not in done.stdout + done.stderr
        with pytest.raises(JobNotFound):
            await resources.store.get(old.id)
        assert await objects_of(resources, old.id) == []
        assert (await resources.store.get(recent.id)).id == recent.id
        assert await objects_of(resources, recent.id)

        audit = await asyncio.to_thread(handover, "audit", "verify", env=env)
        assert audit.returncode == 0, audit.stderr
        assert audit.stdout.startswith("OK: 3 audit entries, chain intact")

        again = await purge(env=env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("nothing to purge: no finished job ended before ")


@pytest.mark.slow
async def test_stats_over_http_count_the_same_before_and_after_a_purge(
    api_factory: ApiFactory, s3_endpoint: str, bucket: str
) -> None:
    env = shared_env(s3_endpoint, bucket)
    crm = MemoryConnector("crm", records={p: {"contacts": [{"id": p}]} for p in ("alice", "bob")})
    api = await api_factory({"crm": crm})
    old = await api.export(sub="alice")
    recent = await api.export(sub="bob")
    await api.wait(old["id"], sub="alice")
    await api.wait(recent["id"], sub="bob")
    await backdate(api.resources, old["id"], RETENTION + timedelta(days=10))

    async def stats() -> Any:
        """The counts (the queue's depth, also in the answer, moves with background tasks)."""
        status, _, body = await api.request("GET", "/v1/stats", sub="s1", roles=("support",))
        assert status == 200, body
        return body["counts"]

    before = await stats()
    assert before["export"] == {"succeeded": 2}
    done = await purge(env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("purged 1 finished job(s) that ended before ")
    status, _, _ = await api.request("GET", f"/v1/jobs/{old['id']}", sub="s1", roles=("support",))
    assert status == 404
    assert await stats() == before


async def test_purge_refuses_in_one_line_and_purges_nothing(redis: ArqRedis) -> None:
    away = await purge(env={"HANDOVER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert away.returncode == 1
    line = one_line(away)
    assert line.startswith("handover: jobs purge: HANDOVER_REDIS_URL: Redis at 127.0.0.1:")
    assert line.endswith("; nothing purged")

    forever = await purge(
        "--dry-run", env={"HANDOVER_REDIS_URL": REDIS_URL, "HANDOVER_RECORD_RETENTION": "off"}
    )
    assert forever.returncode == 2
    assert one_line(forever) == (
        "handover: HANDOVER_RECORD_RETENTION: finished jobs cannot be kept forever (storage "
        "limitation, GDPR Art. 5(1)(e)); give the accountability period, e.g. 3y"
    )
