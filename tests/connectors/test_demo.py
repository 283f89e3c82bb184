"""The demo database and the three connectors that read it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncGenerator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from connectors import demo
from connectors.base import Connector
from connectors.demo import (
    DEMO_SUBJECTS,
    BillingConnector,
    DevicesConnector,
    ProfileConnector,
    seed_demo_database,
)
from connectors.errors import PermanentError, TransientError
from connectors.items import Record, Subject

TABLES = ("users", "consents", "devices", "telemetry", "invoices")

# What each connector should return for a subject, queried independently of demo.py.
EXPECTED_QUERIES: dict[type[Connector], dict[str, str]] = {
    ProfileConnector: {
        "profile": "SELECT * FROM users WHERE id = ?",
        "consents": "SELECT * FROM consents WHERE user_id = ? ORDER BY purpose",
    },
    DevicesConnector: {
        "devices": "SELECT * FROM devices WHERE owner_id = ? ORDER BY id",
        "telemetry": (
            "SELECT * FROM telemetry"
            " WHERE device_id IN (SELECT id FROM devices WHERE owner_id = ?)"
            " ORDER BY device_id, ts"
        ),
    },
    BillingConnector: {
        "invoices": "SELECT * FROM invoices WHERE user_id = ? ORDER BY issued_at, id",
    },
}
CONNECTOR_TYPES = tuple(EXPECTED_QUERIES)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "demo.sqlite3"
    seed_demo_database(path)
    return path


def connect(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path))


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with connect(path) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in TABLES
        }


def expected_records(
    path: Path, connector_type: type[Connector], subject_id: str
) -> list[tuple[str, dict[str, Any]]]:
    with connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return [
            (dataset, dict(row))
            for dataset, sql in EXPECTED_QUERIES[connector_type].items()
            for row in connection.execute(sql, (subject_id,))
        ]


async def export(connector: Connector, subject_id: str) -> list[Record]:
    records = []
    async for item in connector.export(Subject(subject_id)):
        assert isinstance(item, Record)
        records.append(item)
    return records


def build(connector_type: type[Connector], path: Path) -> Connector:
    return connector_type("demo", database=str(path))


def test_seed_creates_the_demo_platform(database: Path) -> None:
    with connect(database) as connection:

        def count(sql: str, *params: str) -> int:
            value: int = connection.execute(sql, params).fetchone()[0]
            return value

        users = connection.execute("SELECT id, email FROM users ORDER BY id").fetchall()
        assert users == [(subject, f"{subject}@example.com") for subject in DEMO_SUBJECTS]
        for subject in DEMO_SUBJECTS:
            devices = count("SELECT count(*) FROM devices WHERE owner_id = ?", subject)
            assert 2 <= devices <= 3
            assert 2 <= count("SELECT count(*) FROM invoices WHERE user_id = ?", subject) <= 4
            assert 2 <= count("SELECT count(*) FROM consents WHERE user_id = ?", subject) <= 3
        per_device = connection.execute(
            "SELECT count(*) FROM telemetry GROUP BY device_id"
        ).fetchall()
        assert per_device
        assert all(readings == 200 for (readings,) in per_device)
        assert len(per_device) == count("SELECT count(*) FROM devices")
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_seed_is_idempotent(database: Path) -> None:
    before = dump(database)

    seed_demo_database(database)

    assert dump(database) == before


def test_seed_is_deterministic(database: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"

    seed_demo_database(other)

    assert dump(other) == dump(database)


@pytest.mark.parametrize("connector_type", CONNECTOR_TYPES)
@pytest.mark.parametrize("subject_id", DEMO_SUBJECTS)
async def test_export_yields_exactly_the_subjects_rows(
    database: Path, connector_type: type[Connector], subject_id: str
) -> None:
    records = await export(build(connector_type, database), subject_id)

    assert [(r.dataset, dict(r.data)) for r in records] == expected_records(
        database, connector_type, subject_id
    )
    assert records
    others = set(DEMO_SUBJECTS) - {subject_id}
    assert not [r for r in records for v in r.data.values() if any(o in str(v) for o in others)]


@pytest.mark.parametrize("connector_type", CONNECTOR_TYPES)
async def test_export_of_unknown_subject_yields_nothing(
    database: Path, connector_type: type[Connector]
) -> None:
    assert await export(build(connector_type, database), "dave") == []


@pytest.mark.parametrize("connector_type", CONNECTOR_TYPES)
async def test_records_follow_the_declared_datasets(
    database: Path, connector_type: type[Connector]
) -> None:
    connector = build(connector_type, database)

    records = await export(connector, "alice")

    for record in records:
        assert tuple(record.data) == connector.dataset(record.dataset).fields
    names = [r.dataset for r in records]
    runs = [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]
    assert runs == [d.name for d in connector.datasets]
    assert {d.category for d in connector.datasets} == connector.categories


@pytest.mark.parametrize("connector_type", CONNECTOR_TYPES)
async def test_check_passes_on_a_seeded_database(
    database: Path, connector_type: type[Connector]
) -> None:
    await build(connector_type, database).check()


@pytest.mark.parametrize("connector_type", CONNECTOR_TYPES)
async def test_check_rejects_a_missing_file(
    tmp_path: Path, connector_type: type[Connector]
) -> None:
    connector = build(connector_type, tmp_path / "absent.sqlite3")

    with pytest.raises(PermanentError, match="does not exist"):
        await connector.check()


@pytest.mark.parametrize("connector_type", CONNECTOR_TYPES)
async def test_check_rejects_a_database_without_the_table(
    tmp_path: Path, connector_type: type[Connector]
) -> None:
    path = tmp_path / "other.sqlite3"
    with connect(path) as connection:
        connection.execute("CREATE TABLE unrelated (id TEXT)")

    with pytest.raises(PermanentError, match="no such table"):
        await build(connector_type, path).check()


async def test_export_from_a_database_without_the_table_is_permanent(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with connect(path) as connection:
        connection.execute("CREATE TABLE unrelated (id TEXT)")

    with pytest.raises(PermanentError, match="no such table") as raised:
        await export(build(BillingConnector, path), "alice")
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


async def test_locked_database_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "_BUSY_TIMEOUT_SECONDS", 0.05)
    path = tmp_path / "locked.sqlite3"
    with connect(path) as writer:
        writer.isolation_level = None
        writer.execute("CREATE TABLE invoices (id TEXT)")
        writer.execute("BEGIN EXCLUSIVE")

        with pytest.raises(TransientError, match="locked"):
            await export(build(BillingConnector, path), "alice")


@pytest.fixture
def opened_connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every connection opened while the test runs."""
    opened: list[sqlite3.Connection] = []
    original = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = original(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    return opened


def assert_closed(connection: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


async def test_consumer_stopping_early_closes_the_connection(
    database: Path, opened_connections: list[sqlite3.Connection]
) -> None:
    connector = build(DevicesConnector, database)
    stream = connector.export(Subject("alice"))
    assert isinstance(stream, AsyncGenerator)
    async for _ in stream:
        break
    await stream.aclose()

    assert len(opened_connections) == 1
    assert_closed(opened_connections[0])
    records = await export(connector, "alice")
    assert len(records) == len(expected_records(database, DevicesConnector, "alice"))
    assert_closed(opened_connections[1])


async def test_telemetry_of_a_long_history_streams_every_row(database: Path) -> None:
    with connect(database) as connection, connection:
        connection.executemany(
            "INSERT INTO telemetry VALUES ('alice-dev-1', ?, 20.5, 40.0)",
            [(2_000_000_000 + second,) for second in range(20_000)],
        )

    records = await export(build(DevicesConnector, database), "alice")

    telemetry = [(r.data["device_id"], r.data["ts"]) for r in records if r.dataset == "telemetry"]
    expected = [
        (row["device_id"], row["ts"])
        for dataset, row in expected_records(database, DevicesConnector, "alice")
        if dataset == "telemetry"
    ]
    assert len(telemetry) > 20_000
    assert telemetry == expected
