"""Erasure of the demo platform's data held in a real PostgreSQL server, end to end over HTTP.

The demo connectors (``sql`` connectors, the configuration ``handover serve``
uses) are pointed at a fresh PostgreSQL database seeded with the same sample
platform. With a retention rule for invoices (tax law), each test shows one of:
erasure removes the subject's rows and anonymises the configured columns, keeps
invoices blocked with their legal basis, a fresh export then holds only the
retained data, the receipt verifies; a dry run changes nothing; a canceled
erasure touches nothing; a worker killed at any step of an erasure (or Redis failing
right after the commit) still ends in a receipt that counts exactly what was removed.
"""

from __future__ import annotations

import io
import os
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from arq.connections import ArqRedis

from connectors.demo import demo_connector_configs
from connectors.registry import ConnectorConfig, build_connectors
from jobs.archive.signing import jwk_public_key
from jobs.archive.verify import verify_receipt_file
from jobs.commands import Actor, Commands
from jobs.keyring import KeyRing
from jobs.model import JobKind, JobStatus
from jobs.resources import NAMESPACE, open_resources
from jobs.settings import RetentionConfig, Settings
from tests.factories import connectors_toml
from tests.faults import (
    HandoverProcess,
    another_worker_takes_over,
    died,
    ended,
    killed_at_the_end,
    worker_env,
)
from tests.service.conftest import Api, ApiFactory

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = os.environ.get(
    "HANDOVER_TEST_POSTGRES_URL", "postgresql://handover:handover@127.0.0.1:5432/postgres"
)
TAX_LAW = RetentionConfig(
    name="invoices",
    legal_basis="Tax law: invoices are kept 10 years (GDPR Art. 17(3)(b))",
    duration=timedelta(days=3650),
    dataset="billing/invoices",
)
TABLES = ("users", "consents", "devices", "telemetry", "invoices", "newsletter")


@pytest.fixture
async def platform_db() -> AsyncIterator[str]:
    """A fresh PostgreSQL database holding the demo platform; its URL."""
    name = f"handover_erasure_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(POSTGRES)
    except OSError as exc:
        pytest.fail(f"no PostgreSQL at {POSTGRES} ({exc}); `make test` starts one")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    seeding = await asyncpg.connect(url)
    await seeding.execute((ROOT / "deploy" / "platform-seed.sql").read_text())
    await seeding.close()
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    connection = await asyncpg.connect(url)
    try:
        return {
            table: [
                tuple(row)
                for row in await connection.fetch(f'SELECT * FROM "{table}" ORDER BY 1, 2')
            ]
            for table in TABLES
        }
    finally:
        await connection.close()


@pytest.fixture
async def api(api_factory: ApiFactory, platform_db: str, tmp_path: Path) -> Api:
    sqlalchemy_url = "postgresql+asyncpg://" + platform_db.split("://", 1)[1]
    configs = [
        ConnectorConfig(c.name, c.type, {**c.options, "url": sqlalchemy_url})
        for c in demo_connector_configs(tmp_path / "unused.sqlite3")
    ]
    connectors = build_connectors(configs)
    for connector in connectors.values():
        await connector.open()
    api = await api_factory(connectors, erasure_grace=timedelta(0), retention=(TAX_LAW,))
    api.platform_db = platform_db  # type: ignore[attr-defined]
    return api


async def erase(api: Api, **body: Any) -> dict[str, Any]:
    status, _, job = await api.request("POST", "/v1/erasures", json=body)
    assert status == 202, job
    return job  # type: ignore[no-any-return]


async def test_erasure_removes_anonymises_keeps_invoices_blocked_and_signs(
    api: Api, tmp_path: Path
) -> None:
    url = api.platform_db  # type: ignore[attr-defined]
    before = await dump(url)
    job = await erase(api)
    assert (await api.request("POST", f"/v1/jobs/{job['id']}/confirm"))[0] == 200
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    after = await dump(url)

    def alices(
        table: str, rows: dict[str, list[tuple[Any, ...]]], column: int
    ) -> list[tuple[Any, ...]]:
        return [row for row in rows[table] if row[column] == "alice"]

    assert alices("consents", after, 0) == []
    # The newsletter knows alice only by email, which the profile connector provided.
    assert [r for r in before["newsletter"] if r[0] == "alice@example.com"]
    assert [r for r in after["newsletter"] if r[0] == "alice@example.com"] == []
    assert [r for r in after["newsletter"] if r[0] != "alice@example.com"] == [
        r for r in before["newsletter"] if r[0] != "alice@example.com"
    ]
    assert done["identity"] == [
        {
            "identifiers": ["email"],
            "source": "connector profile",
            "verified_by": "looked up at profile by id",
        }
    ]
    alice_devices = {row[0] for row in before["devices"] if row[1] == "alice"}
    assert [r for r in after["devices"] if r[0] in alice_devices] == []
    assert [r for r in after["telemetry"] if r[0] in alice_devices] == []
    user = next(row for row in after["users"] if row[0] == "alice")
    assert user[1] != "alice@example.com" and len(user[1]) == 64  # email hashed
    assert user[2] is None  # name nulled
    invoices = alices("invoices", after, 1)
    assert invoices and len(invoices) == len(alices("invoices", before, 1))
    assert all(row[-1] == 1 for row in invoices)  # blocked: processing_restricted
    # Nobody else's data was touched.
    for table, column in (("consents", 0), ("invoices", 1)):
        assert [r for r in after[table] if r[column] != "alice"] == [
            r for r in before[table] if r[column] != "alice"
        ]

    billing = {e["dataset"]: e for e in done["connectors"]["billing"]["report"]["datasets"]}
    assert billing["invoices"]["retained"] == len(invoices)
    assert billing["invoices"]["legal_basis"] == TAX_LAW.legal_basis
    status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 200
    path = tmp_path / "receipt.json"
    assert (await api.verified(receipt, path)).ok
    assert b"alice@example.com" not in path.read_bytes()

    export = await api.export()
    # The platform no longer knows alice's email: the newsletter cannot be asked until
    # support supplies the address she gave, and the job says so instead of guessing.
    waiting = await api.wait(export["id"], "needs_attention")
    assert waiting["connectors"]["newsletter"]["status"] == "unidentified"
    status, _, _ = await api.request(
        "POST",
        f"/v1/jobs/{export['id']}/identifiers",
        sub="support-1",
        roles=("support",),
        json={"email": "alice@example.com", "verified_by": "the address of her request"},
    )
    assert status == 200
    exported = await api.wait(export["id"])
    assert exported["status"] == "succeeded"
    _, headers, _ = await api.request("GET", f"/v1/jobs/{export['id']}/download")
    async with api.session.get(headers["Location"]) as response:
        archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    data_files = [n for n in archive.namelist() if "/" in n]
    assert data_files == ["billing/invoices.json"]  # only what the law keeps
    assert len(orjson.loads(archive.read("billing/invoices.json"))) == len(invoices)


async def test_a_dry_run_changes_nothing(api: Api) -> None:
    url = api.platform_db  # type: ignore[attr-defined]
    before = await dump(url)
    job = await erase(api, dry_run=True)
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert await dump(url) == before
    devices = {e["dataset"]: e for e in done["connectors"]["devices"]["report"]["datasets"]}
    assert devices["telemetry"]["deleted"] > 0  # what would happen is reported


async def test_a_canceled_erasure_touches_nothing(api_factory: ApiFactory, api: Api) -> None:
    url = api.platform_db  # type: ignore[attr-defined]
    before = await dump(url)
    slow = await api_factory(dict(api.resources.connectors), erasure_grace=timedelta(hours=24))
    job = await erase(slow)
    assert (await slow.request("POST", f"/v1/jobs/{job['id']}/confirm"))[0] == 200
    status, _, canceled = await slow.request("POST", f"/v1/jobs/{job['id']}/cancel")
    assert status == 200 and canceled["status"] == "canceled"
    assert await dump(url) == before


async def alices_rows(url: str) -> dict[str, int]:
    """How many rows of alice's each dataset of the ``devices`` connector holds."""
    connection = await asyncpg.connect(url)
    try:
        devices = await connection.fetchval("SELECT count(*) FROM devices WHERE owner_id = 'alice'")
        telemetry = await connection.fetchval(
            "SELECT count(*) FROM telemetry JOIN devices ON devices.id = telemetry.device_id"
            " WHERE devices.owner_id = 'alice'"
        )
    finally:
        await connection.close()
    return {"devices": devices, "telemetry": telemetry}


async def grow_telemetry(url: str, rows: int) -> None:
    """Give alice's first device ``rows`` more readings."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO telemetry (device_id, ts, temperature, humidity)"
            " SELECT 'alice-dev-1', 2000000000 + n, 20.5, 40.0 FROM generate_series(1, $1) AS n",
            rows,
        )
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("crash_at", "crash", "outcome"),
    [
        ("before_commit", "kill", "rolled back"),
        ("after_commit", "kill", "committed"),
        ("verification", "kill", None),
        ("after_commit", "redis", "committed"),
        ("finish", "kill", None),
    ],
)
async def test_a_receipt_after_a_crash_counts_exactly_what_the_erasure_removed(
    platform_db: str,
    redis: ArqRedis,
    tmp_path: Path,
    crash_at: str,
    crash: str,
    outcome: str | None,
) -> None:
    """A worker dies (or Redis fails) at one step of an erasure on real PostgreSQL;
    another worker finishes it, and the signed receipt states what was really removed."""
    await grow_telemetry(platform_db, 20_000)
    before = await alices_rows(platform_db)
    marker = tmp_path / "crash-once"
    sqlalchemy_url = "postgresql+asyncpg://" + platform_db.split("://", 1)[1]
    configs = [
        ConnectorConfig(
            c.name,
            "crashing-sql" if c.name == "devices" else c.type,
            {**c.options, "url": sqlalchemy_url}
            | (
                {"crash_at": crash_at, "crash": crash, "marker": str(marker)}
                if c.name == "devices"
                else {}
            ),
        )
        for c in demo_connector_configs(tmp_path / "unused.sqlite3")
    ]
    config = tmp_path / "handover.toml"
    config.write_text(connectors_toml(configs))
    env = worker_env(config, tmp_path / "data")
    settings = Settings.load(env)
    workers: list[HandoverProcess] = []
    with killed_at_the_end(workers):
        async with open_resources(settings, redis=redis) as resources:
            commands = Commands(resources)
            actor = Actor("alice", staff=False)
            workers.append(HandoverProcess(env, tmp_path / "worker-1.log", logs_only=True))
            # An earlier export: its archive is Handover's own copy, which the erasure deletes.
            export = await commands.request_export(actor, subject="alice")
            exported = await ended(resources, export.id, workers)
            assert exported.status is JobStatus.SUCCEEDED, exported.error
            marker.touch()
            job = await commands.request_erasure(actor, JobKind.ERASURE, subject="alice")
            await commands.confirm(actor, job.id)
            if crash == "kill":
                await died(workers[0], "the worker to die at the injected crash")
                assert not marker.exists()
                rows = await alices_rows(platform_db)
                assert rows == (before if crash_at == "before_commit" else dict.fromkeys(rows, 0))
                workers.append(
                    await another_worker_takes_over(resources, env, tmp_path / "worker-2.log")
                )
            done = await ended(resources, job.id, workers)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert await alices_rows(platform_db) == {"devices": 0, "telemetry": 0}
    assert done.receipt is not None
    devices = next(c for c in done.receipt["connectors"] if c["connector"] == "devices")
    deleted = {e["dataset"]: e["deleted"] for e in devices["datasets"]}
    assert deleted == before  # what really went, across every attempt
    assert before["telemetry"] > 20_000
    interrupted = devices.get("interrupted_attempts", [])
    assert [i["outcome"] for i in interrupted] == ([outcome] if outcome else [])
    (copy,) = done.receipt["handover_copies"]
    assert copy["job"] == export.id and copy["archive_deleted"] and copy["status"] == "expired"
    path = tmp_path / "receipt.json"
    path.write_bytes(orjson.dumps(done.receipt))
    keyring = KeyRing(redis, NAMESPACE, settings.archive_ttl)
    assert verify_receipt_file(path, [jwk_public_key(k) for k in await keyring.active()]).ok
