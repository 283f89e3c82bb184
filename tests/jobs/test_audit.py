"""The audit log is hash-chained: any changed, inserted or removed entry is detected."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from redis.exceptions import BusyLoadingError

from jobs.audit import AuditLog, chain_hash
from jobs.queue import connect
from tests.conftest import REDIS_URL
from tests.faults import RedisServer
from tests.polling import eventually


@pytest.fixture
async def log(redis: ArqRedis) -> AuditLog:
    audit = AuditLog(redis, "handover:")
    for n in range(6):
        await audit.append("support-1" if n % 2 else "s_1234", f"action.{n}", f"job-{n}", n=n)
    return audit


async def rebuild(redis: ArqRedis, edit: Any) -> None:
    """Rewrite the stream as an attacker with write access would, applying ``edit``."""
    entries = [dict(fields) for _, fields in await redis.xrange("handover:audit")]
    entries = edit(entries)
    await redis.delete("handover:audit")
    for fields in entries:
        await redis.xadd("handover:audit", fields)


def audit_verify() -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env["HANDOVER_REDIS_URL"] = REDIS_URL
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_an_intact_log_verifies(log: AuditLog) -> None:
    result = await log.verify()
    assert result.ok, result.problems
    assert result.entries == 6
    newest = await log.entries(2)
    assert [e["action"] for e in newest] == ["action.5", "action.4"]
    completed = await asyncio.to_thread(audit_verify)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("OK: 6 audit entries, chain intact")


async def test_concurrent_appends_all_land_in_one_unbroken_chain(log: AuditLog) -> None:
    writers = [AuditLog(log.redis, "handover:") for _ in range(12)]
    hashes = await asyncio.gather(
        *(w.append("support-1", "action.concurrent", f"job-{n}") for n, w in enumerate(writers))
    )
    assert len(set(hashes)) == 12
    result = await log.verify()
    assert result.ok, result.problems
    assert result.entries == 18
    assert result.head in hashes


async def test_a_changed_entry_is_detected(log: AuditLog, redis: ArqRedis) -> None:
    def change(entries: list[dict[bytes, bytes]]) -> list[dict[bytes, bytes]]:
        body = orjson.loads(entries[2][b"body"])
        body["actor"] = "someone-else"
        entries[2][b"body"] = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        return entries

    await rebuild(redis, change)
    result = await log.verify()
    assert not result.ok
    assert len(result.problems) == 1 and "was changed" in result.problems[0]
    completed = await asyncio.to_thread(audit_verify)
    assert completed.returncode == 1
    assert "its content was changed" in completed.stderr


async def test_an_inserted_entry_is_detected(log: AuditLog, redis: ArqRedis) -> None:
    def insert(entries: list[dict[bytes, bytes]]) -> list[dict[bytes, bytes]]:
        prev = entries[2][b"hash"].decode()
        body = orjson.dumps({"action": "forged", "actor": "x", "at": "2026-01-01", "job": "j"})
        forged = {b"prev": prev.encode(), b"hash": chain_hash(prev, body).encode(), b"body": body}
        return [*entries[:3], forged, *entries[3:]]

    await rebuild(redis, insert)
    result = await log.verify()
    assert not result.ok
    assert any("inserted or removed" in p for p in result.problems)


async def test_removed_entries_are_detected(log: AuditLog, redis: ArqRedis) -> None:
    await rebuild(redis, lambda entries: entries[:2] + entries[3:])
    middle = await log.verify()
    assert any("inserted or removed" in p for p in middle.problems)


async def test_entries_removed_from_the_end_are_detected(log: AuditLog, redis: ArqRedis) -> None:
    await rebuild(redis, lambda entries: entries[:-1])
    result = await log.verify()
    assert result.problems == [
        "the log's head does not match its last entry (entries were removed from the end)"
    ]


async def test_recorded_entries_are_chained_in_the_background_in_the_order_recorded(
    redis: ArqRedis,
) -> None:
    # Two processes' logs record at once; each seals in the background, one chain results.
    first, second = AuditLog(redis, "handover:"), AuditLog(redis, "handover:")
    recorded = await asyncio.gather(
        *(
            (first if n % 2 else second).record(first.entry("support-1", "action.x", f"job-{n}"))
            for n in range(40)
        )
    )
    await first.settle()
    await second.settle()
    assert await redis.xlen("handover:audit:pending") == 0
    sealed = await redis.xrange("handover:audit")
    in_order = sorted(recorded, key=lambda entry_id: [int(n) for n in entry_id.split("-")])
    assert [fields[b"seq"].decode() for _, fields in sealed] == in_order
    result = await first.verify()
    assert result.ok, result.problems
    assert result.entries == 40


async def test_verify_seals_what_a_process_recorded_before_it_died(log: AuditLog) -> None:
    # A process recorded entries and was killed before its background seal: Redis kept them.
    body = log.entry("support-1", "job.canceled", "job-9").body
    for _ in range(3):
        await log.redis.xadd(log.pending_key, {"body": body})
    completed = await asyncio.to_thread(audit_verify)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("OK: 9 audit entries, chain intact")
    assert await log.redis.xlen(log.pending_key) == 0
    assert [e["action"] for e in await log.entries(4)] == ["job.canceled"] * 3 + ["action.5"]


async def test_sealers_racing_each_other_chain_every_entry_once(redis: ArqRedis) -> None:
    logs = [AuditLog(redis, "handover:") for _ in range(4)]
    for n in range(300):
        await redis.xadd(
            "handover:audit:pending", {"body": logs[0].entry("s_1", "a", f"job-{n}").body}
        )
    await asyncio.gather(*(audit.seal() for audit in logs))
    result = await logs[0].verify()
    assert result.ok, result.problems
    assert result.entries == 300


async def test_a_background_seal_that_finds_redis_away_tries_again_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    redis = await connect(server.url, retries=0)  # each failure seen, not ridden out
    try:
        audit = AuditLog(redis, "handover:")
        await audit.record(audit.entry("support-1", "action.x", "job-1"))
        server.stop()  # blocks the event loop: the seal, due 50 ms later, has not run yet
        await eventually(
            lambda: "audit entries not sealed yet" in caplog.text,
            timeout=10,
            what="the background seal to find Redis away",
        )
        server.start()  # the append-only file kept the recorded entry
        await eventually(
            lambda: redis.xlen("handover:audit:pending"),
            until=lambda pending: pending == 0,
            timeout=10,
            what="the background seal to try again and chain the entry",
            ignoring=(BusyLoadingError,),  # this probe too may ask while Redis loads that file
        )
        result = await audit.verify()
        assert (result.ok, result.entries) == (True, 1)
    finally:
        await redis.aclose()
        server.stop()
