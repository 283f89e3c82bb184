"""The ``sql`` connector against real PostgreSQL and MariaDB servers, and SQLite.

Every test gets a database of its own (``handover_t_<random>``, dropped afterwards)
on each backend. The servers are found through ``HANDOVER_TEST_POSTGRES_URL`` and
``HANDOVER_TEST_MARIADB_URL`` (defaults: the ``handover`` user that
``scripts/ensure-services`` makes); a server that does not answer fails the test,
it never skips it.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
import re
import socket
import sqlite3
import threading
import tomllib
import tracemalloc
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from arq.connections import ArqRedis
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    false,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable

from connectors.base import Connector
from connectors.errors import PermanentError, TransientError, Unidentified
from connectors.items import Record, Records, Series, Subject
from connectors.reports import ErasureReport, FieldChange, RetentionRule
from connectors.sql import SqlConnector
from connectors.sql import connector as sql_connector
from connectors.sql.errors import NEW_VALUE_REFUSED
from connectors.testing import ConnectorContract
from jobs.commands import Actor, Commands
from tests.jobs.test_export import archive_of, drain
from tests.polling import eventually

POSTGRES_URL = os.environ.get(
    "HANDOVER_TEST_POSTGRES_URL", "postgresql://handover:handover@127.0.0.1:5432/postgres"
)
MARIADB_URL = os.environ.get(
    "HANDOVER_TEST_MARIADB_URL", "mysql://handover:handover@127.0.0.1:3306/"
)
SERVERS = {"postgresql": POSTGRES_URL, "mariadb": MARIADB_URL}
DRIVERS = {"postgresql": "postgresql+asyncpg", "mariadb": "mysql+aiomysql"}
BACKENDS = ("postgresql", "mariadb", "sqlite")

HASH_KEY = "test-hash-key-that-is-long-enough-0123"
ALICE = Subject("alice", email="alice@example.com")
BOB = Subject("bob", email="bob@example.com")
INVOICE_RULE = RetentionRule("tax law: invoices are kept 10 years", timedelta(days=3650))

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(255)),
    Column("name", String(255)),
    Column("country", String(8), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("processing_restricted", Boolean, nullable=False, server_default=false()),
    CheckConstraint("country <> 'ZZ'", name="users_country_not_zz"),
)
consents = Table(
    "consents",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id"), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("granted", Boolean, nullable=False),
)
devices = Table(
    "devices",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("model", String(64), nullable=False),
    Column("processing_restricted", Boolean, nullable=False, server_default=false()),
)
sensors = Table(
    "sensors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("device_id", String(32), ForeignKey("devices.id"), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
)
telemetry = Table(
    "telemetry",
    metadata,
    Column("sensor_id", Integer, ForeignKey("sensors.id"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("reading", Numeric(8, 2), nullable=False),
)
invoices = Table(
    "invoices",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id"), nullable=False, index=True),
    Column("amount", Numeric(10, 2), nullable=False),
    Column("issued_at", DateTime, nullable=False),
    Column("processing_restricted", Boolean, nullable=False, server_default=false()),
)
newsletter = Table(
    "newsletter",
    metadata,
    Column("email", String(255), primary_key=True),
    Column("subscribed_at", DateTime, nullable=False),
)
ledger = Table(
    "ledger",
    metadata,
    Column("account", Integer, primary_key=True, autoincrement=False),
    Column("balance", Numeric(10, 2), nullable=False),
)
TABLES = ("users", "consents", "devices", "sensors", "telemetry", "invoices", "newsletter")

EPOCH = datetime(2024, 1, 1, 9, 30)

# The reference IoT platform: the shape docs/sql-connector.md describes. The
# tables are listed parents first on purpose: erasure must still go children first.
PLATFORM_TOML = f"""
hash_key = "{HASH_KEY}"

[[tables]]
table = "users"
dataset = "profile"
category = "identification"
description = "the account"
columns = ["id", "email", "name", "country", "created_at"]
subject_column = "id"
erase = "anonymise"
anonymise = {{ email = "hash", name = "null", country = {{ fixed = "XX" }}, created_at = "keep" }}
block_column = "processing_restricted"

[[tables]]
table = "consents"
category = "consent"
subject_column = "user_id"
erase = "delete"

[[tables]]
table = "devices"
category = "device"
subject_column = "owner_id"
erase = "delete"
block_column = "processing_restricted"

[[tables]]
table = "sensors"
category = "device"
through = [{{ column = "device_id", references = "devices.id" }}]
subject_column = "owner_id"
erase = "delete"

[[tables]]
table = "telemetry"
category = "telemetry"
order_by = ["sensor_id", "seq"]
through = [
  {{ column = "sensor_id", references = "sensors.id" }},
  {{ column = "device_id", references = "devices.id" }},
]
subject_column = "owner_id"
erase = "delete"

[[tables]]
table = "invoices"
category = "economic"
subject_column = "user_id"
erase = "delete"
block_column = "processing_restricted"

[[tables]]
table = "newsletter"
category = "contact"
subject_column = "email"
identity = "email"
erase = "delete"
"""

# What the connector should yield per dataset, queried independently of connectors/sql/
# (typed by this file's own schema, since SQLite keeps no types of its own).
EXPECTED_QUERIES = {
    "profile": (
        users,
        "SELECT id, email, name, country, created_at FROM users WHERE id = :id ORDER BY id",
    ),
    "consents": (consents, "SELECT * FROM consents WHERE user_id = :id ORDER BY user_id, purpose"),
    "devices": (devices, "SELECT * FROM devices WHERE owner_id = :id ORDER BY id"),
    "sensors": (
        sensors,
        "SELECT s.* FROM sensors s JOIN devices d ON d.id = s.device_id"
        " WHERE d.owner_id = :id ORDER BY s.id",
    ),
    "telemetry": (
        telemetry,
        "SELECT t.* FROM telemetry t JOIN sensors s ON s.id = t.sensor_id"
        " JOIN devices d ON d.id = s.device_id WHERE d.owner_id = :id ORDER BY t.sensor_id, t.seq",
    ),
    "invoices": (invoices, "SELECT * FROM invoices WHERE user_id = :id ORDER BY id"),
    "newsletter": (newsletter, "SELECT * FROM newsletter WHERE email = :email ORDER BY email"),
}


def platform_options(**changes: Any) -> dict[str, Any]:
    """The platform's connector options as TOML gives them, with top-level ``changes``."""
    options = tomllib.loads(PLATFORM_TOML)
    options.update(changes)
    return options


def table_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in options["tables"] if t["table"] == name)
    return found


@dataclass
class Database:
    """A fresh database on one backend: its URL for the connector, and our own engine."""

    backend: str
    url: str
    engine: AsyncEngine
    name: str | None = None

    async def drop(self) -> None:
        """Close our engine and drop the database from its server."""
        await self.engine.dispose()
        if self.name is not None:
            force = " WITH (FORCE)" if self.backend == "postgresql" else ""
            await server_statement(self.backend, f"DROP DATABASE {self.name}{force}")

    async def rows(
        self, sql: str, table: Table | None = None, **params: Any
    ) -> list[dict[str, Any]]:
        """The rows ``sql`` selects, typed by ``table``'s columns when given."""
        statement: Executable = text(sql)
        if table is not None:
            statement = text(sql).columns(**{c.name: c.type for c in table.c})
        async with self.engine.connect() as connection:
            result = await connection.execute(statement, params)
            return [dict(row._mapping) for row in result]

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in a stable order."""
        async with self.engine.connect() as connection:
            return {
                name: [
                    tuple(row)
                    for row in await connection.execute(text(f"SELECT * FROM {name} ORDER BY 1, 2"))
                ]
                for name in TABLES
            }

    async def idle(self) -> bool:
        """Whether no connection of anyone but us is open on the database (or locks it)."""
        await self.engine.dispose()
        if self.backend == "sqlite":
            path = make_url(self.url).database
            assert path is not None
            with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as probe:
                try:
                    probe.execute("BEGIN EXCLUSIVE")
                except sqlite3.OperationalError:
                    return False
                probe.execute("ROLLBACK")
                return True
        sessions = {
            "postgresql": "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
            "mariadb": "SELECT count(*) FROM information_schema.processlist"
            " WHERE db = database() AND id <> connection_id()",
        }
        [row] = await self.rows(sessions[self.backend])
        return list(row.values()) == [0]

    async def expected(self, subject: Subject) -> list[tuple[str, dict[str, Any]]]:
        params = {"id": subject.id, "email": subject.email}
        return [
            (dataset, row)
            for dataset, (table, sql) in EXPECTED_QUERIES.items()
            for row in await self.rows(sql, table, **params)
        ]

    def connector(self, **options: Any) -> SqlConnector:
        return SqlConnector("platform", url=self.url, **options)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_url(backend: str, database: str) -> str:
    return make_url(SERVERS[backend]).set(database=database).render_as_string(hide_password=False)


def driver_url(url: str, backend: str) -> str:
    return make_url(url).set(drivername=DRIVERS[backend]).render_as_string(hide_password=False)


async def create_database(backend: str, tmp_path: Path) -> Database:
    """A new database on ``backend`` holding the platform's schema and rows."""
    if backend == "sqlite":
        path = tmp_path / f"platform-{uuid.uuid4().hex[:12]}.sqlite3"
        db = Database(
            backend, f"sqlite:///{path}", create_async_engine(f"sqlite+aiosqlite:///{path}")
        )
    else:
        name = f"handover_t_{uuid.uuid4().hex[:12]}"
        try:
            await server_statement(backend, f"CREATE DATABASE {name}")
        except Exception as exc:
            pytest.fail(
                f"no {backend} server usable at {make_url(SERVERS[backend])!r} ({exc});"
                " run scripts/ensure-services (make services)"
            )
        url = server_url(backend, name)
        db = Database(backend, url, create_async_engine(driver_url(url, backend)), name)
    try:
        await create_platform(db)
    except BaseException:
        await db.drop()
        raise
    return db


async def server_statement(backend: str, sql: str) -> None:
    """Run ``sql`` on the server of ``backend`` outside any database of ours."""
    admin = create_async_engine(driver_url(SERVERS[backend], backend), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(sql))
    finally:
        await admin.dispose()


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A database of this test's own on each backend, dropped afterwards."""
    db = await create_database(request.param, tmp_path)
    try:
        yield db
    finally:
        await db.drop()


async def create_platform(db: Database) -> None:
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        people = [
            ("alice", "Alice Martin", "FR"),
            ("bob", "Bob Jansen", "NL"),
            ("carol", "Carol Schmidt", "DE"),
        ]
        await connection.execute(
            users.insert(),
            [
                {
                    "id": user_id,
                    "email": f"{user_id}@example.com",
                    "name": name,
                    "country": country,
                    "created_at": EPOCH + timedelta(days=number),
                }
                for number, (user_id, name, country) in enumerate(people)
            ],
        )
        await connection.execute(
            consents.insert(),
            [
                {"user_id": "alice", "purpose": "marketing_email", "granted": True},
                {"user_id": "alice", "purpose": "product_analytics", "granted": False},
                {"user_id": "bob", "purpose": "marketing_email", "granted": False},
            ],
        )
        await connection.execute(
            devices.insert(),
            [
                {"id": "alice-dev-1", "owner_id": "alice", "model": "Thermo S1"},
                {"id": "alice-dev-2", "owner_id": "alice", "model": "AirSense Mini"},
                {"id": "bob-dev-1", "owner_id": "bob", "model": "Thermo S2"},
            ],
        )
        sensor_rows = [
            {"id": 1, "device_id": "alice-dev-1", "kind": "temperature"},
            {"id": 2, "device_id": "alice-dev-1", "kind": "humidity"},
            {"id": 3, "device_id": "alice-dev-2", "kind": "co2"},
            {"id": 4, "device_id": "bob-dev-1", "kind": "temperature"},
        ]
        await connection.execute(sensors.insert(), sensor_rows)
        await connection.execute(
            telemetry.insert(),
            [
                {"sensor_id": s["id"], "seq": seq, "reading": Decimal(f"{20 + seq}.{s['id']}5")}
                for s in sensor_rows
                for seq in range(5)
            ],
        )
        await connection.execute(
            invoices.insert(),
            [
                {"id": "INV-1", "user_id": "alice", "amount": Decimal("19.99"), "issued_at": EPOCH},
                {"id": "INV-2", "user_id": "bob", "amount": Decimal("5.00"), "issued_at": EPOCH},
                {"id": "INV-3", "user_id": "alice", "amount": Decimal("7.50"), "issued_at": EPOCH},
            ],
        )
        await connection.execute(
            newsletter.insert(),
            [
                {"email": "alice@example.com", "subscribed_at": EPOCH},
                {"email": "bob@example.com", "subscribed_at": EPOCH},
            ],
        )
        await connection.execute(ledger.insert(), [{"account": 42, "balance": Decimal("1.25")}])


@pytest.fixture
async def platform(database: Database) -> AsyncIterator[SqlConnector]:
    """The platform's connector, opened."""
    connector = database.connector(**platform_options())
    await connector.open()
    yield connector
    await connector.close()


async def export(connector: SqlConnector, subject: Subject) -> list[Record]:
    records = []
    async for item in connector.export(subject):
        assert isinstance(item, Record)
        records.append(item)
    return records


async def opened(connector: SqlConnector) -> SqlConnector:
    await connector.open()
    return connector


def counts(report: ErasureReport) -> dict[str, tuple[int, int, int]]:
    return {e.dataset: (e.deleted, e.anonymised, e.retained) for e in report.datasets}


def keyed_sha256(value: str) -> str:
    return hmac.new(HASH_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


# -- export -------------------------------------------------------------------------


@pytest.mark.parametrize("subject", [ALICE, BOB], ids=["alice", "bob"])
async def test_export_equals_direct_queries(
    database: Database, platform: SqlConnector, subject: Subject
) -> None:
    records = await export(platform, subject)

    assert [(r.dataset, dict(r.data)) for r in records] == await database.expected(subject)
    assert {r.dataset for r in records} == {d.name for d in platform.datasets}
    others = {"alice", "bob", "carol"} - {subject.id}
    leaked = [r for r in records for v in r.data.values() if any(o in str(v) for o in others)]
    assert leaked == []


async def test_chains_reach_the_subject_through_each_reference(platform: SqlConnector) -> None:
    records = await export(platform, ALICE)

    sensors_seen = {r.data["id"] for r in records if r.dataset == "sensors"}
    telemetry_seen = {r.data["sensor_id"] for r in records if r.dataset == "telemetry"}
    assert sensors_seen == telemetry_seen == {1, 2, 3}
    assert len([r for r in records if r.dataset == "telemetry"]) == 15


async def test_records_keep_the_configured_column_order(database: Database) -> None:
    options = platform_options()
    table_options("users", options)["columns"] = ["name", "country", "id"]
    connector = await opened(database.connector(**options))
    try:
        records = await export(connector, ALICE)
    finally:
        await connector.close()

    profile = [r for r in records if r.dataset == "profile"]
    assert [list(r.data) for r in profile] == [["name", "country", "id"]]
    assert connector.dataset("profile").fields == ("name", "country", "id")
    devices_record = next(r for r in records if r.dataset == "devices")
    assert list(devices_record.data) == ["id", "owner_id", "model", "processing_restricted"]


async def test_a_consumer_stopping_early_leaves_no_connection_open(
    database: Database, platform: SqlConnector
) -> None:
    stream = platform.export(ALICE)
    assert isinstance(stream, AsyncGenerator)
    async for _ in stream:
        break
    await stream.aclose()
    await platform.close()

    # The server notices a closed connection a moment later: poll, never sleep.
    await eventually(database.idle, timeout=10, what="no connection of the connector's left")


async def test_a_consumer_stopping_batches_early_leaves_no_connection_open(
    database: Database, platform: SqlConnector
) -> None:
    stream = platform.export_batches(ALICE)
    assert isinstance(stream, AsyncGenerator)
    async for _ in stream:
        break
    await stream.aclose()
    await platform.close()

    # The server notices a closed connection a moment later: poll, never sleep.
    await eventually(database.idle, timeout=10, what="no connection of the connector's left")


readings_metadata = MetaData()
readings = Table(
    "readings",
    readings_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("user_id", String(32), nullable=False, index=True),
    Column("note", String(64), nullable=False),
    Column("value", Numeric(8, 2), nullable=False),
)
READINGS = 2 * sql_connector._BATCH_ROWS + 500  # two and a half cursor fetches of alice's


async def test_each_cursor_fetch_is_one_batch_and_the_archive_holds_every_page(
    database: Database, resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    """Pages of 1,000 rows, rows an erasure anonymised left out of each, through a worker."""
    alice_rows = [
        {
            "id": n,
            "user_id": "alice",
            "note": "gone" if n % 7 == 0 else f"reading {n}",  # "gone": anonymised already
            "value": Decimal(f"{n}.25"),
        }
        for n in range(READINGS)
    ]
    bob_rows = [{"id": READINGS + n, "user_id": "bob", "note": "x", "value": 1} for n in range(50)]
    async with database.engine.begin() as connection:
        await connection.run_sync(readings_metadata.create_all)
        await connection.execute(readings.insert(), alice_rows + bob_rows)
    table = {
        "table": "readings",
        "category": "telemetry",
        "subject_column": "user_id",
        "order_by": ["id"],
        "erase": "anonymise",
        "anonymise": {"note": {"fixed": "gone"}},
    }
    connector = await opened(database.connector(tables=[table]))
    try:
        batches = [batch async for batch in connector.export_batches(ALICE)]
        async with resources_factory({"platform": connector}) as resources:
            job = await Commands(resources).request_export(
                Actor("alice", staff=False), subject="alice", formats=["ndjson", "csv"]
            )
            await drain(redis, resources)
            archive = await archive_of(resources, job.id)
            done = await resources.store.get(job.id)
    finally:
        await connector.close()
    fetches = [
        alice_rows[start : start + sql_connector._BATCH_ROWS]
        for start in range(0, READINGS, sql_connector._BATCH_ROWS)
    ]
    kept = [[row for row in fetch if row["note"] != "gone"] for fetch in fetches]
    assert all(isinstance(batch, Records) for batch in batches)
    sizes = [(b.dataset, len(b.rows)) for b in batches if isinstance(b, Records)]
    assert sizes == [("readings", len(page)) for page in kept]
    expected = [row for page in kept for row in page]
    lines = archive.read("platform/readings.ndjson").splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {**row, "value": str(row["value"])} for row in expected
    ]
    assert done.connectors["platform"].records == len(expected)
    csv_lines = archive.read("platform/readings.csv").decode().splitlines()
    assert csv_lines[0] == "id,user_id,note,value" and len(csv_lines) == len(expected) + 1


async def test_an_unknown_subject_has_nothing(platform: SqlConnector) -> None:
    assert await export(platform, Subject("dave", email="dave@example.com")) == []


async def test_a_subject_id_is_matched_to_an_integer_column(database: Database) -> None:
    connector = await opened(
        database.connector(
            tables=[
                {"table": "ledger", "category": "economic", "subject_column": "account"}
                | {"erase": "delete"}
            ]
        )
    )
    try:
        assert [dict(r.data) for r in await export(connector, Subject("42"))] == [
            {"account": 42, "balance": Decimal("1.25")}
        ]
        assert await export(connector, Subject("not-a-number")) == []
        report = await connector.erase(Subject("not-a-number"), dry_run=False, retention={})
    finally:
        await connector.close()
    assert counts(report) == {"ledger": (0, 0, 0)}


async def test_export_streams_a_long_history_in_flat_memory(database: Database) -> None:
    rows = 80_000
    async with database.engine.begin() as connection:
        if database.backend == "mariadb":
            await connection.execute(text("SET SESSION max_recursive_iterations = 1000000"))
        await connection.execute(
            text(
                "INSERT INTO telemetry (sensor_id, seq, reading)"
                " WITH RECURSIVE n(i) AS"
                " (SELECT 1000 UNION ALL SELECT i + 1 FROM n WHERE i < :last)"
                " SELECT 1, i, 21.5 FROM n"
            ),
            {"last": 1000 + rows - 1},
        )
    options = platform_options()
    options["tables"] = [table_options("telemetry", options)]
    connector = await opened(database.connector(**options))
    try:
        assert len(await export(connector, BOB)) == 5  # warm the statement caches
        streamed = 0
        tracemalloc.start()
        try:
            async for item in connector.export(ALICE):
                assert isinstance(item, Record)
                streamed += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await connector.close()

    assert streamed == rows + 15
    # Holding the rows would take well over 20 MiB; a streamed export holds one batch.
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB of Python allocations"


# -- erase ---------------------------------------------------------------------------


async def test_erase_applies_each_tables_strategy(
    database: Database, platform: SqlConnector
) -> None:
    held = await database.expected(ALICE)
    bob_before = await database.expected(BOB)
    before = datetime.now(UTC)

    report = await platform.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})

    def number(dataset: str) -> int:
        return len([row for name, row in held if name == dataset])

    assert counts(report) == {
        "profile": (0, 1, 0),
        "consents": (number("consents"), 0, 0),
        "devices": (number("devices"), 0, 0),
        "sensors": (number("sensors"), 0, 0),
        "telemetry": (number("telemetry"), 0, 0),
        "invoices": (0, 0, number("invoices")),
        "newsletter": (number("newsletter"), 0, 0),
    }
    assert number("telemetry") == 15
    retained = report.dataset("invoices")
    assert retained.legal_basis == INVOICE_RULE.legal_basis
    assert retained.retained_until is not None
    assert before + INVOICE_RULE.duration <= retained.retained_until
    assert retained.retained_until <= datetime.now(UTC) + INVOICE_RULE.duration
    assert report.dataset("profile").legal_basis is None

    [user] = await database.rows("SELECT * FROM users WHERE id = 'alice'", users)
    assert user["email"] == keyed_sha256("alice@example.com")  # hash
    assert user["name"] is None  # null
    assert user["country"] == "XX"  # fixed
    assert user["created_at"] == EPOCH  # keep
    left = await database.expected(ALICE)
    assert [name for name, _ in left] == ["profile", "invoices", "invoices"]
    blocked = await database.rows(
        "SELECT processing_restricted FROM invoices WHERE user_id = 'alice'"
    )
    assert [bool(row["processing_restricted"]) for row in blocked] == [True, True]
    assert await database.expected(BOB) == bob_before


async def test_after_erase_export_holds_only_the_retained_data(
    platform: SqlConnector,
) -> None:
    await platform.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})

    records = await export(platform, ALICE)

    assert [(r.dataset, r.data["id"], bool(r.data["processing_restricted"])) for r in records] == [
        ("invoices", "INV-1", True),
        ("invoices", "INV-3", True),
    ]


async def test_a_second_erase_reports_nothing_new(platform: SqlConnector) -> None:
    first = await platform.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})

    second = await platform.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})

    assert counts(second) == {
        name: (0, 0, retained) for name, (_, _, retained) in counts(first).items()
    }
    assert second.dataset("invoices").retained == 2
    assert second.dataset("invoices").legal_basis == INVOICE_RULE.legal_basis


async def test_a_dry_run_changes_nothing_and_tells_what_would_happen(
    database: Database, platform: SqlConnector
) -> None:
    before = await database.dump()

    dry = await platform.erase(ALICE, dry_run=True, retention={"invoices": INVOICE_RULE})

    assert await database.dump() == before
    restricted = await platform.restrict(ALICE, dry_run=True)
    assert await database.dump() == before
    assert restricted.restricted == {"profile": 1, "devices": 2, "invoices": 2}
    real = await platform.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})
    assert counts(dry) == counts(real)
    assert await database.dump() != before


async def test_a_failure_midway_rolls_the_whole_erase_back(database: Database) -> None:
    options = platform_options()
    # users is erased last (every other table refers to it); the CHECK constraint
    # refuses this country, after the children's rows were deleted.
    table_options("users", options)["anonymise"]["country"] = {"fixed": "ZZ"}
    connector = await opened(database.connector(**options))
    before = await database.dump()
    try:
        with pytest.raises(PermanentError) as raised:
            await connector.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})
    finally:
        await connector.close()

    assert raised.value.__cause__ is not None
    assert await database.dump() == before
    # PostgreSQL's message goes on "Failing row contains (alice, …)": detail only.
    assert "alice" not in str(raised.value)
    assert raised.value.detail is not None
    assert "users_country_not_zz" in str(raised.value) + raised.value.detail


# What each backend says when the fixed value below collides with bob's address: the
# message names the class and code; the driver's words (quoting it) go to the detail.
DUPLICATE_KEY = {
    "postgresql": (
        "UniqueViolationError (SQLSTATE 23505, table users, constraint users_email_unique)",
        "Key (email)=(bob@example.com) already exists.",
    ),
    "mariadb": ("IntegrityError (SQLSTATE 23000, MySQL error 1062)", "'bob@example.com'"),
    "sqlite": ("IntegrityError (SQLITE_CONSTRAINT_UNIQUE)", "users.email"),
}


async def test_a_driver_message_quoting_personal_data_stays_in_the_detail(
    database: Database,
) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text("CREATE UNIQUE INDEX users_email_unique ON users (email)"))
    options = platform_options()
    table_options("users", options)["anonymise"]["email"] = {"fixed": "bob@example.com"}
    connector = await opened(database.connector(**options))
    try:
        with pytest.raises(PermanentError) as raised:
            await connector.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})
    finally:
        await connector.close()

    message, quoted = DUPLICATE_KEY[database.backend]
    assert str(raised.value).endswith(f": {message}")
    for personal in ("alice", "bob@example.com"):
        assert personal not in str(raised.value)
    assert raised.value.detail is not None
    assert quoted in raised.value.detail


async def test_retention_needs_a_block_column(database: Database, platform: SqlConnector) -> None:
    before = await database.dump()

    with pytest.raises(PermanentError, match=r"table 'consents'.*block_column"):
        await platform.erase(ALICE, dry_run=False, retention={"consents": INVOICE_RULE})

    assert await database.dump() == before


async def test_a_retain_table_is_blocked_with_its_own_legal_basis(database: Database) -> None:
    options = platform_options()
    table_options("invoices", options).update(
        erase="retain", legal_basis="tax law (§147 AO)", retained_for_days=3650
    )
    connector = await opened(database.connector(**options))
    try:
        report = await connector.erase(ALICE, dry_run=False, retention={})
        overridden = await connector.erase(
            ALICE, dry_run=True, retention={"invoices": INVOICE_RULE}
        )
    finally:
        await connector.close()

    invoices_entry = report.dataset("invoices")
    assert (invoices_entry.retained, invoices_entry.legal_basis) == (2, "tax law (§147 AO)")
    assert invoices_entry.retained_until is not None
    assert invoices_entry.retained_until - datetime.now(UTC) > timedelta(days=3649)
    assert overridden.dataset("invoices").legal_basis == INVOICE_RULE.legal_basis
    flags = await database.rows(
        "SELECT processing_restricted FROM invoices WHERE user_id = 'alice'"
    )
    assert all(row["processing_restricted"] for row in flags)


async def test_anonymisation_pages_through_a_composite_key(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_connector, "_BATCH_ROWS", 1)
    options = platform_options()
    table_options("consents", options).update(
        erase="anonymise", anonymise={"granted": {"fixed": False}}
    )
    connector = await opened(database.connector(**options))
    try:
        report = await connector.erase(ALICE, dry_run=False, retention={})
        again = await connector.erase(ALICE, dry_run=False, retention={})
        left = [r.dataset for r in await export(connector, ALICE)]
    finally:
        await connector.close()

    # alice granted one of her two consents; the other already holds the fixed value
    assert report.dataset("consents").anonymised == 1
    assert again.dataset("consents").anonymised == 0
    rows = await database.rows("SELECT * FROM consents ORDER BY user_id, purpose", consents)
    assert [(row["user_id"], bool(row["granted"])) for row in rows] == [
        ("alice", False),
        ("alice", False),
        ("bob", False),
    ]
    assert "consents" not in left


async def test_a_subject_without_a_tables_identifier_is_unidentified(
    database: Database, platform: SqlConnector
) -> None:
    before = await database.dump()
    known_by_id = Subject("alice")

    stream = platform.export(known_by_id)
    with pytest.raises(
        Unidentified, match="connector 'platform' needs the subject's email, and none is known"
    ) as raised:
        await anext(stream)  # before the first row of the first table
    for dry_run in (True, False):
        with pytest.raises(Unidentified, match="needs the subject's email"):
            await platform.erase(known_by_id, dry_run=dry_run, retention={"invoices": INVOICE_RULE})

    assert raised.value.needs == ("email",)
    assert await database.dump() == before  # the tables keyed by id were rolled back too
    restricted = await platform.restrict(known_by_id, dry_run=True)  # no newsletter block_column
    assert restricted.restricted == {"profile": 1, "devices": 2, "invoices": 2}


async def test_an_identity_table_is_unidentified_without_that_identity(
    database: Database,
) -> None:
    options = platform_options()
    table_options("newsletter", options)["identity"] = "newsletter_id"
    table_options("invoices", options)["identity"] = "phone_number"
    connector = database.connector(**options)

    assert connector.identifiers == {"id", "newsletter_id", "phone_number"}
    assert connector.describe()["identifiers"] == ["id", "newsletter_id", "phone_number"]
    await connector.open()
    try:
        with pytest.raises(Unidentified, match="needs the subject's phone_number"):
            await export(connector, ALICE)
        with pytest.raises(Unidentified, match="needs the subject's phone_number"):
            await connector.restrict(ALICE, dry_run=False)
        everything = Subject(
            "alice",
            identities={"newsletter_id": "alice@example.com", "phone_number": "alice"},
        )
        held = {r.dataset for r in await export(connector, everything)}
    finally:
        await connector.close()
    assert held == set(EXPECTED_QUERIES)


# -- identity source (provides) ------------------------------------------------------


async def resolved(database: Database, subject: Subject, **provides: str) -> Mapping[str, str]:
    connector = await opened(database.connector(**platform_options(provides=provides)))
    try:
        return await connector.resolve(subject)
    finally:
        await connector.close()


async def test_provides_reads_the_email_of_the_subjects_row(database: Database) -> None:
    connector = database.connector(**platform_options(provides={"email": "users.email"}))
    assert connector.provides == {"email"}
    assert build().provides == frozenset()

    assert await resolved(database, Subject("alice"), email="users.email") == {
        "email": "alice@example.com"
    }
    assert await resolved(database, Subject("dave"), email="users.email") == {}


async def test_provides_leaves_out_an_identifier_the_rows_do_not_hold(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text("UPDATE users SET email = NULL WHERE id = 'bob'"))

    found = await resolved(database, Subject("bob"), email="users.email", sensor="sensors.id")

    assert found == {"sensor": "4"}  # an integer column's value, as text


async def test_provides_refuses_an_ambiguous_identifier(database: Database) -> None:
    assert await resolved(database, BOB, model="devices.model") == {"model": "Thermo S2"}
    with pytest.raises(PermanentError) as raised:
        await resolved(database, ALICE, model="devices.model")
    assert str(raised.value) == (
        "connector 'platform': the subject's rows of 'devices' hold more than one model in "
        "column 'model': ambiguous, so none is taken"
    )
    assert "Thermo" not in str(raised.value)

    async with database.engine.begin() as connection:
        await connection.execute(text("UPDATE devices SET model = 'Thermo S1'"))
    assert await resolved(database, ALICE, model="devices.model") == {"model": "Thermo S1"}


async def test_provides_does_not_read_an_anonymised_row(database: Database) -> None:
    connector = await opened(
        database.connector(**platform_options(provides={"email": "users.email"}))
    )
    try:
        await connector.erase(ALICE, dry_run=False, retention={"invoices": INVOICE_RULE})
        found = await connector.resolve(Subject("alice"))
    finally:
        await connector.close()

    [user] = await database.rows("SELECT email FROM users WHERE id = 'alice'")
    assert user["email"] == keyed_sha256("alice@example.com")
    assert found == {}


async def test_provides_needs_the_identifier_its_table_is_keyed_by(database: Database) -> None:
    provides = {"newsletter_since": "newsletter.subscribed_at"}
    connector = await opened(database.connector(**platform_options(provides=provides)))
    try:
        with pytest.raises(Unidentified, match="needs the subject's email"):
            await connector.resolve(Subject("alice"))
        found = await connector.resolve(ALICE)
    finally:
        await connector.close()

    assert set(found) == {"newsletter_since"}
    assert found["newsletter_since"].startswith("2024-01-01")


async def test_provides_names_a_missing_column(database: Database) -> None:
    connector = await opened(
        database.connector(**platform_options(provides={"email": "users.mail"}))
    )
    try:
        with pytest.raises(PermanentError, match="missing in the database: column 'users.mail'"):
            await connector.check()
        with pytest.raises(PermanentError, match="column 'users.mail'"):
            await connector.resolve(ALICE)
    finally:
        await connector.close()


# -- restrict ------------------------------------------------------------------------


async def test_restrict_blocks_every_table_with_a_block_column(
    database: Database, platform: SqlConnector
) -> None:
    report = await platform.restrict(ALICE, dry_run=False)

    assert report.supported
    assert report.restricted == {"profile": 1, "devices": 2, "invoices": 2}
    assert report.note is not None
    assert "consents" in report.note and "telemetry" in report.note
    for table, column in (("users", "id"), ("devices", "owner_id"), ("invoices", "user_id")):
        flags = await database.rows(
            f"SELECT {column} AS who, processing_restricted AS flag FROM {table}"
        )
        assert {row["who"]: bool(row["flag"]) for row in flags}.get("alice") is True
        assert not any(row["flag"] for row in flags if row["who"] != "alice")
    assert (await platform.restrict(ALICE, dry_run=False)).restricted == report.restricted


async def test_restrict_without_block_columns_is_unsupported(database: Database) -> None:
    options = platform_options()
    options["tables"] = [table_options("consents", options)]
    connector = await opened(database.connector(**options))
    try:
        report = await connector.restrict(ALICE, dry_run=False)
    finally:
        await connector.close()

    assert not report.supported
    assert report.note is not None and "block_column" in report.note


# -- check and errors ----------------------------------------------------------------


async def test_check_passes_on_the_platform(platform: SqlConnector) -> None:
    await platform.check()


async def test_check_names_every_missing_table_and_column(database: Database) -> None:
    options = platform_options()
    table_options("users", options)["columns"] = ["id", "emial"]
    table_options("telemetry", options)["through"][1]["references"] = "gadgets.id"
    connector = await opened(database.connector(**options))
    try:
        with pytest.raises(PermanentError) as raised:
            await connector.check()
        with pytest.raises(PermanentError, match="emial"):
            await export(connector, ALICE)
    finally:
        await connector.close()

    assert "column 'users.emial'" in str(raised.value)
    assert "table 'gadgets'" in str(raised.value)


async def test_a_missing_table_is_permanent(database: Database) -> None:
    options = platform_options()
    table_options("consents", options)["table"] = "agreements"
    connector = await opened(database.connector(**options))
    try:
        with pytest.raises(PermanentError, match="table 'agreements'"):
            await export(connector, ALICE)
        with pytest.raises(PermanentError, match="table 'agreements'"):
            await connector.erase(ALICE, dry_run=False, retention={})
    finally:
        await connector.close()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_a_server_that_does_not_answer_is_transient(backend: str) -> None:
    url = make_url(server_url(backend, "test")).set(port=free_port())
    connector = SqlConnector(
        "platform",
        **platform_options(url=url.render_as_string(hide_password=False), connect_timeout=5),
    )
    await connector.open()
    try:
        with pytest.raises(TransientError) as raised:
            await connector.check()
        with pytest.raises(TransientError):
            await export(connector, ALICE)
    finally:
        await connector.close()

    assert raised.value.__cause__ is not None
    assert "handover:handover" not in str(raised.value)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_a_lock_wait_timeout_is_transient_and_rolls_back(
    backend: str, tmp_path: Path
) -> None:
    db = await create_database(backend, tmp_path)
    try:
        if backend == "postgresql":
            await server_statement(backend, f"ALTER DATABASE {db.name} SET lock_timeout = '200ms'")
            url = db.url
        else:
            url = db.url + "?init_command=SET+innodb_lock_wait_timeout%3D1"
        connector = await opened(SqlConnector("platform", **platform_options(url=url)))
        before = await db.dump()
        async with db.engine.connect() as holder:
            await holder.begin()
            await holder.execute(
                text("UPDATE invoices SET amount = amount WHERE user_id = 'alice'")
            )
            try:
                with pytest.raises(
                    TransientError, match="SQLSTATE 55P03|MySQL error 1205"
                ) as raised:
                    await connector.erase(
                        ALICE, dry_run=False, retention={"invoices": INVOICE_RULE}
                    )
            finally:
                await holder.rollback()
                await connector.close()
        assert raised.value.__cause__ is not None
        assert await db.dump() == before
    finally:
        await db.drop()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_an_unknown_database_is_permanent(backend: str) -> None:
    connector = SqlConnector(
        "platform", **platform_options(url=server_url(backend, "handover_t_absent"))
    )
    await connector.open()
    try:
        with pytest.raises(PermanentError, match="handover_t_absent"):
            await connector.check()
    finally:
        await connector.close()


async def test_a_refused_login_is_permanent() -> None:
    url = make_url(server_url("mariadb", "test")).set(password="not-the-password")
    connector = SqlConnector(
        "platform", **platform_options(url=url.render_as_string(hide_password=False))
    )
    await connector.open()
    try:
        with pytest.raises(PermanentError, match=r"\(SQLSTATE 28000, MySQL error 1045\)") as raised:
            await connector.check()
    finally:
        await connector.close()

    assert raised.value.detail is not None
    assert "Access denied" in raised.value.detail
    assert "not-the-password" not in str(raised.value) + raised.value.detail


async def test_a_locked_sqlite_database_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    await engine.dispose()
    connector = SqlConnector(
        "platform", **platform_options(url=f"sqlite:///{path}", connect_timeout=0.05)
    )
    await connector.open()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(TransientError, match=r"\(SQLITE_(BUSY|LOCKED)\w*\)$"):
            await connector.erase(ALICE, dry_run=False, retention={})
    finally:
        holder.close()
        await connector.close()


async def test_a_missing_sqlite_file_is_permanent_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.sqlite3"
    connector = await opened(SqlConnector("platform", **platform_options(url=f"sqlite:///{path}")))
    try:
        with pytest.raises(PermanentError, match=r"OperationalError \(SQLITE_CANTOPEN\)") as raised:
            await connector.check()
    finally:
        await connector.close()

    assert raised.value.detail is not None
    assert "unable to open" in raised.value.detail
    assert not path.exists()
    await aiosqlite_threads_finished()


async def aiosqlite_threads_finished(deadline_seconds: float = 10.0) -> None:
    """Wait for aiosqlite's worker threads to end while the event loop still runs.

    A connection that fails to open stops its thread with a future nobody awaits;
    the thread then reports to the loop, which must not be closed yet.
    """
    await eventually(
        lambda: [t.name for t in threading.enumerate() if "_connection_worker_thread" in t.name],
        until=lambda running: not running,
        timeout=deadline_seconds,
        what="aiosqlite's worker threads to end",
    )


async def test_a_connector_not_opened_says_so() -> None:
    connector = SqlConnector("platform", **platform_options(url="sqlite:///unused.sqlite3"))

    with pytest.raises(PermanentError, match="not open"):
        await connector.check()


async def test_requests_leave_no_state_on_the_instance(platform: SqlConnector) -> None:
    before = dict(vars(platform))

    await export(platform, ALICE)
    await platform.erase(ALICE, dry_run=True, retention={"invoices": INVOICE_RULE})
    await platform.restrict(BOB, dry_run=False)

    assert vars(platform) == before


# -- configuration -------------------------------------------------------------------


def build(**changes: Any) -> SqlConnector:
    return SqlConnector("platform", **platform_options(url="sqlite:///unused.sqlite3", **changes))


def with_table(name: str, **changes: Any) -> list[dict[str, Any]]:
    options = platform_options()
    table = table_options(name, options)
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    tables: list[dict[str, Any]] = options["tables"]
    return tables


def test_the_documented_examples_build() -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "sql-connector.md"
    blocks = re.findall(r"```toml\n(.*?)```", guide.read_text(), flags=re.DOTALL)
    complete = [block for block in blocks if 'type = "sql"' in block and "subject_column" in block]
    documents = [tomllib.loads(block) for block in complete]

    assert documents
    for document in documents:
        for name, table in document["connectors"].items():
            options = {key: value for key, value in table.items() if key != "type"}
            connector = SqlConnector(name, **options)
            assert connector.datasets


def test_the_platform_declares_its_datasets_and_categories() -> None:
    connector = build()

    assert [d.name for d in connector.datasets] == list(EXPECTED_QUERIES)
    assert connector.dataset("profile").category == "identification"
    assert connector.categories == {
        "identification",
        "consent",
        "device",
        "telemetry",
        "economic",
        "contact",
    }


BAD_TABLES = [
    pytest.param("users", {"subject_column": None}, "needs subject_column", id="no-subject"),
    pytest.param("users", {"erase": "shred"}, "erase must be", id="unknown-erase"),
    pytest.param("users", {"erase": None}, "erase must be", id="no-erase"),
    pytest.param("users", {"category": None}, "needs category", id="no-category"),
    pytest.param("users", {"colums": ["id"]}, "unknown key(s) colums", id="unknown-key"),
    pytest.param("users", {"anonymise": {"email": "scramble"}}, "anonymise.email", id="bad-rule"),
    pytest.param("users", {"anonymise": {"email": "keep"}}, "keeps every column", id="all-kept"),
    pytest.param("consents", {"anonymise": {"purpose": "null"}}, "need erase", id="stray-rules"),
    pytest.param("users", {"columns": ["id", "id"]}, "twice", id="column-twice"),
    pytest.param("users", {"columns": ["id; DROP TABLE users"]}, "columns must be", id="inject"),
    pytest.param("users", {"dataset": "../profile"}, "dataset must be", id="bad-dataset"),
    pytest.param(
        "sensors", {"through": [{"column": "device_id"}]}, "through[0] must be", id="hop-shape"
    ),
    pytest.param(
        "sensors",
        {"through": [{"column": "device_id", "references": "devices"}]},
        "table.column",
        id="hop-reference",
    ),
    pytest.param(
        "telemetry",
        {"through": [{"column": "sensor_id", "references": "telemetry.seq"}]},
        "leads back to table 'telemetry'",
        id="hop-loop",
    ),
    pytest.param("invoices", {"erase": "retain"}, "needs legal_basis", id="retain-no-basis"),
    pytest.param(
        "consents",
        {"erase": "retain", "legal_basis": "law", "retained_for_days": 30},
        "needs a block_column",
        id="retain-no-block",
    ),
    pytest.param(
        "invoices",
        {"erase": "retain", "legal_basis": "law", "retained_for_days": "10y"},
        "retained_for_days",
        id="retain-days",
    ),
    pytest.param("invoices", {"legal_basis": "law"}, 'go with erase = "retain"', id="stray-basis"),
    pytest.param(
        "users", {"column_descriptions": ["id"]}, "column_descriptions must be", id="notes-shape"
    ),
    pytest.param(
        "users", {"column_descriptions": {"id": ""}}, "column_descriptions: id", id="notes-text"
    ),
    pytest.param(
        "users",
        {"columns": ["id", "email"], "column_descriptions": {"name": "the name"}},
        "name 'name', not in columns",
        id="notes-column",
    ),
    pytest.param("telemetry", {"series": {"time": "seq"}}, "series.values", id="series-values"),
    pytest.param(
        "telemetry", {"series": {"values": ["v"], "at": "seq"}}, "series must be", id="series-key"
    ),
]


def test_column_descriptions_and_series_reach_the_datasets() -> None:
    series = {"time": "seq", "values": ["value"], "by": "sensor_id"}
    connector = build(
        tables=with_table(
            "telemetry", column_descriptions={"seq": "the reading's number"}, series=series
        )
    )

    telemetry = connector.dataset("telemetry")
    assert telemetry.column_descriptions == {"seq": "the reading's number"}
    assert telemetry.series == Series(time="seq", values=("value",), by="sensor_id")


@pytest.mark.parametrize(("table", "changes", "message"), BAD_TABLES)
def test_a_bad_table_is_refused_naming_it(
    table: str, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError) as raised:
        build(tables=with_table(table, **changes))

    text_ = str(raised.value)
    assert text_.startswith(f"connector 'platform': table '{table}'")
    assert message in text_
    assert "\n" not in text_


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"url": None}, "needs url", id="no-url"),
        pytest.param({"url": "oracle://db/x"}, "not supported", id="unsupported"),
        pytest.param({"url": "sqlite://"}, "SQLite database file", id="sqlite-memory"),
        pytest.param({"hash_key": "short"}, "hash_key", id="short-key"),
        pytest.param({"hash_key": None}, "table 'users': a hashed column needs", id="no-key"),
        pytest.param({"tables": []}, "needs tables", id="no-tables"),
        pytest.param({"pool_size": 0}, "pool_size", id="pool-size"),
        pytest.param({"connect_timeout": "soon"}, "connect_timeout", id="timeout"),
        pytest.param({"schema": "public"}, "unknown option(s) schema", id="unknown-option"),
        pytest.param(
            {"provides": "users.email"},
            'provides must name identifiers and the columns holding them, such as { email = "',
            id="provides-shape",
        ),
        pytest.param({"provides": {}}, "provides must name identifiers", id="provides-empty"),
        pytest.param(
            {"provides": {"email": "users"}},
            "provides.email must be \"table.column\", got 'users'",
            id="provides-column",
        ),
        pytest.param(
            {"provides": {"email": "users.e-mail"}},
            'provides.email must be "table.column"',
            id="provides-bad-column",
        ),
        pytest.param(
            {"provides": {"email": "accounts.email"}},
            "provides.email: table 'accounts' is not one of the connector's tables (users, ",
            id="provides-table",
        ),
        pytest.param(
            {"provides": {"id": "users.id"}},
            "provides: 'id' cannot name an identifier",
            id="provides-id",
        ),
        pytest.param(
            {"provides": {"e mail": "users.email"}},
            "provides: 'e mail' cannot name an identifier",
            id="provides-name",
        ),
        pytest.param(
            {"provides": {"email": "newsletter.email"}},
            "provides.email: table 'newsletter' finds the subject by email itself",
            id="provides-circular",
        ),
    ],
)
def test_bad_options_are_refused(changes: dict[str, Any], message: str) -> None:
    options = platform_options(**({"url": "sqlite:///unused.sqlite3"} | changes))
    options = {key: value for key, value in options.items() if value is not None}

    with pytest.raises(PermanentError, match="connector 'platform'") as raised:
        SqlConnector("platform", **options)

    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_duplicate_datasets_and_cycles_are_refused() -> None:
    options = platform_options()
    table_options("consents", options)["dataset"] = "profile"
    with pytest.raises(PermanentError, match="table 'consents': dataset 'profile' is already"):
        build(tables=options["tables"])

    options = platform_options()
    table_options("devices", options)["through"] = [
        {"column": "id", "references": "sensors.device_id"}
    ]
    with pytest.raises(PermanentError, match="through each other"):
        build(tables=options["tables"])


# -- the contract kit ------------------------------------------------------------------


class SqlContract(ConnectorContract):
    """The contract every connector passes, on a fresh platform database per test."""

    backend: ClassVar[str]
    created: Database | None = None

    @pytest.fixture(autouse=True)
    def _keep_tmp_path(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    async def make_connector(self) -> Connector:
        self.created = await create_database(self.backend, self.tmp_path)
        return self.created.connector(**rectifying_options(objection=CONSENT_OBJECTION))

    def subject_with_data(self) -> Subject:
        return ALICE

    def retention(self) -> Mapping[str, RetentionRule]:
        return {"invoices": INVOICE_RULE}

    async def make_failing_connector(self) -> Connector:
        if self.backend == "sqlite":
            gone = self.tmp_path / "gone.sqlite3"
            sqlite3.connect(gone).close()  # a database whose tables are gone
            url = f"sqlite:///{gone}"
        else:
            url = (
                make_url(server_url(self.backend, "test"))
                .set(port=free_port())
                .render_as_string(hide_password=False)
            )
        return SqlConnector("platform", **platform_options(url=url))

    async def cleanup(self) -> None:
        if self.created is not None:
            await self.created.drop()


class TestSqlConnectorOnPostgresql(SqlContract):
    backend = "postgresql"


class TestSqlConnectorOnMariadb(SqlContract):
    backend = "mariadb"


class TestSqlConnectorOnSqlite(SqlContract):
    backend = "sqlite"


class SqlByEmailContract(SqlContract):
    """The contract for a connector whose only table is keyed by the subject's email."""

    async def make_connector(self) -> Connector:
        self.created = await create_database(self.backend, self.tmp_path)
        options = platform_options()
        return self.created.connector(tables=[table_options("newsletter", options)])

    def retention(self) -> Mapping[str, RetentionRule]:
        return {}


class TestSqlConnectorByEmailOnPostgresql(SqlByEmailContract):
    backend = "postgresql"


class TestSqlConnectorByEmailOnMariadb(SqlByEmailContract):
    backend = "mariadb"


class TestSqlConnectorByEmailOnSqlite(SqlByEmailContract):
    backend = "sqlite"


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://db/platform", "asyncpg", "postgres"),
        ("mariadb://db/platform", "aiomysql", "mysql"),
    ],
)
def test_a_driver_not_installed_is_named_with_the_extra_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == module else find_spec(name, *a),
    )
    with pytest.raises(PermanentError) as raised:
        SqlConnector("platform", **platform_options(url=url))
    assert str(raised.value) == (
        f"connector 'platform': url {url.split(':')[0]}:// needs the {module} driver, "
        f"which is not installed: pip install 'handover[{extra}]'"
    )


# -- objection (GDPR Art. 21) ----------------------------------------------------------

CONSENT_OBJECTION = {
    "table": "consents",
    "purpose_column": "purpose",
    "granted_column": "granted",
    "purposes": {"direct_marketing": ["marketing_email"], "analytics": ["product_analytics"]},
}


def rectifying_options(**changes: Any) -> dict[str, Any]:
    """The platform's options with the users' name and email rectifiable."""
    options = platform_options(**changes)
    users = table_options("users", options)
    users["rectifiable"] = {"name": "text", "email": "email"}
    return options


def consent_rows(records: list[Record]) -> dict[str, Any]:
    return {r.data["purpose"]: bool(r.data["granted"]) for r in records if r.dataset == "consents"}


async def test_an_objection_withdraws_the_consents_of_its_purposes_and_reads_them_back(
    database: Database,
) -> None:
    connector = await opened(database.connector(**platform_options(objection=CONSENT_OBJECTION)))
    try:
        assert connector.objection_purposes == {"direct_marketing", "analytics"}
        bob = Subject("bob", email="bob@example.com")
        bob_before = consent_rows(await export(connector, bob))

        report = await connector.object(ALICE, ["direct_marketing", "research"])
        in_force = await connector.objections_in_force(ALICE, ["direct_marketing", "research"])
        again = await connector.object(ALICE, ["direct_marketing"])

        marketing = report.purpose("direct_marketing")
        assert marketing is not None
        assert (marketing.supported, marketing.targets, marketing.stopped) == (
            True,
            ("marketing_email",),
            1,
        )
        research = report.purpose("research")
        assert research is not None and not research.supported
        assert research.note == "connector 'platform' maps no consent purpose to 'research'"
        assert in_force == {"direct_marketing": True}  # research is not this connector's
        assert again.purposes[0].stopped == 0  # nothing new: it was withdrawn already
        assert consent_rows(await export(connector, ALICE)) == {
            "marketing_email": False,
            "product_analytics": False,
        }
        assert consent_rows(await export(connector, bob)) == bob_before

        recorded = await connector.object(bob, ["analytics"])
        assert [(p.purpose, p.stopped) for p in recorded.purposes] == [("analytics", 1)]
        assert consent_rows(await export(connector, bob)) == {
            **bob_before,
            "product_analytics": False,
        }
        nobody = Subject("nobody", email="nobody@example.com")
        untouched = await connector.object(nobody, ["direct_marketing"])
        assert [(p.supported, p.stopped) for p in untouched.purposes] == [(True, 0)]
        assert await export(connector, nobody) == []
    finally:
        await connector.close()


@pytest.mark.parametrize(
    ("objection", "message"),
    [
        ("consents", "objection must be a table of options"),
        ({**CONSENT_OBJECTION, "colour": "red"}, "objection: unknown key(s) colour"),
        ({**CONSENT_OBJECTION, "table": "agreements"}, "objection.table: 'agreements' is not one"),
        ({**CONSENT_OBJECTION, "purposes": {}}, "objection.purposes must map"),
        ({**CONSENT_OBJECTION, "purposes": {"Direct Marketing": ["x"]}}, "is not a purpose name"),
        ({**CONSENT_OBJECTION, "purposes": {"analytics": []}}, "objection.purposes.analytics"),
        ({**CONSENT_OBJECTION, "granted_column": None}, 'needs objection.granted_column = "..."'),
    ],
)
def test_a_bad_objection_option_is_refused_naming_it(objection: object, message: str) -> None:
    with pytest.raises(PermanentError, match=re.escape(message)):
        SqlConnector(
            "platform", **platform_options(url="sqlite:///platform.db", objection=objection)
        )


async def test_an_objection_column_missing_in_the_database_is_named(database: Database) -> None:
    objection = {**CONSENT_OBJECTION, "updated_column": "changed_at"}
    connector = await opened(database.connector(**platform_options(objection=objection)))
    try:
        with pytest.raises(PermanentError, match="objection table 'consents' has no column"):
            await connector.object(ALICE, ["direct_marketing"])
    finally:
        await connector.close()


# -- rectification (GDPR Art. 16) -------------------------------------------------------


async def test_a_rectification_sets_the_field_on_the_subjects_rows_and_reads_it_back(
    database: Database,
) -> None:
    connector = await opened(database.connector(**rectifying_options()))
    try:
        assert {(r.dataset, r.field, r.type, r.identity) for r in connector.rectifiable} == {
            ("profile", "name", "text", False),
            ("profile", "email", "email", True),
        }
        bob_before = await export(connector, Subject("bob", email="bob@example.com"))
        changes = [FieldChange("profile", "name", "Alice Dupont")]

        report = await connector.rectify(ALICE, changes)
        again = await connector.rectify(ALICE, changes)

        assert [(f.dataset, f.field, f.changed) for f in report.fields] == [("profile", "name", 1)]
        assert again.fields[0].changed == 0
        assert await connector.rectifications_in_force(ALICE, changes) == [True]
        profile = [r.data for r in await export(connector, ALICE) if r.dataset == "profile"]
        assert [row["name"] for row in profile] == ["Alice Dupont"]
        assert await export(connector, Subject("bob", email="bob@example.com")) == bob_before
        with pytest.raises(PermanentError, match=r"profile\.created_at is not rectifiable"):
            await connector.rectify(ALICE, [FieldChange("profile", "created_at", "x")])
    finally:
        await connector.close()


async def test_an_anonymised_subjects_rows_are_not_rectified(database: Database) -> None:
    connector = await opened(database.connector(**rectifying_options()))
    try:
        await connector.erase(ALICE, dry_run=False, retention={})
        report = await connector.rectify(ALICE, [FieldChange("profile", "name", "Alice D.")])
        assert report.fields[0].changed == 0
    finally:
        await connector.close()


async def test_a_new_value_refused_by_the_database_is_not_kept_in_the_error(
    database: Database,
) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text("CREATE UNIQUE INDEX users_email_unique ON users (email)"))
    connector = await opened(database.connector(**rectifying_options()))
    try:
        with pytest.raises(PermanentError) as raised:
            await connector.rectify(ALICE, [FieldChange("profile", "email", "bob@example.com")])
    finally:
        await connector.close()

    message, _ = DUPLICATE_KEY[database.backend]
    assert str(raised.value).endswith(f": {message}")
    # The driver's words would quote the new value (PostgreSQL: "Key (email)=(…) already
    # exists"); the job keeps the detail after its new values are forgotten.
    assert raised.value.detail == NEW_VALUE_REFUSED
    assert "bob@example.com" not in f"{raised.value} {raised.value.detail}"


@pytest.mark.parametrize(
    ("table", "column", "message"),
    [
        ("sensors", "device_id", "sensors': rectifiable: device_id links sensors to devices"),
        ("devices", "id", "devices': rectifiable: id is referenced by sensors.device_id"),
        ("devices", "owner_id", "owner_id finds or blocks the subject's rows"),
        ("newsletter", "email", "email finds or blocks the subject's rows"),
    ],
)
def test_a_column_that_finds_the_subjects_rows_is_not_rectifiable(
    table: str, column: str, message: str
) -> None:
    options = platform_options(url="sqlite:///platform.db")
    table_options(table, options)["rectifiable"] = {column: "text"}
    with pytest.raises(PermanentError, match=re.escape(message)):
        SqlConnector("platform", **options)


@pytest.mark.parametrize(
    ("table", "column", "message"),
    [
        ("invoices", "id", "table 'invoices': column 'id' is part of the primary key"),
        ("users", "nickname", "missing in the database: column 'users.nickname'"),
    ],
)
async def test_a_key_or_missing_rectifiable_column_is_refused_at_bind_time(
    database: Database, table: str, column: str, message: str
) -> None:
    options = platform_options()
    table_options(table, options)["rectifiable"] = {column: "text"}
    connector = await opened(database.connector(**options))
    try:
        with pytest.raises(PermanentError, match=re.escape(message)):
            await connector.check()
    finally:
        await connector.close()


async def test_a_table_holding_several_rows_of_the_subject_is_not_rectified(
    database: Database,
) -> None:
    options = platform_options()
    table_options("devices", options)["rectifiable"] = {"model": "text"}
    connector = await opened(database.connector(**options))
    before = await database.dump()
    try:
        with pytest.raises(PermanentError, match=r"'devices' holds 2 rows of the subject"):
            await connector.rectify(ALICE, [FieldChange("devices", "model", "Thermo S9")])
    finally:
        await connector.close()
    assert await database.dump() == before


async def test_no_row_of_the_subject_is_reported_as_not_held(database: Database) -> None:
    connector = await opened(database.connector(**rectifying_options()))
    nobody = Subject("nobody", email="nobody@example.com")
    changes = [FieldChange("profile", "name", "Nobody")]
    try:
        report = await connector.rectify(nobody, changes)
    finally:
        await connector.close()
    entry = report.fields[0]
    assert (entry.changed, entry.held) == (0, False)
    assert entry.note == "no row of the subject in users: nothing changed"


@pytest.mark.parametrize(
    ("rectifiable", "message"),
    [
        ({"name": "colour"}, "rectifiable.name must be one of text, email"),
        ({}, "rectifiable must map columns to value types"),
        ({"id": "text"}, "rectifiable: id finds or blocks the subject's rows"),
    ],
)
def test_a_bad_rectifiable_option_is_refused_naming_it(rectifiable: object, message: str) -> None:
    options = platform_options(url="sqlite:///platform.db")
    table_options("users", options)["rectifiable"] = rectifiable
    with pytest.raises(PermanentError, match=re.escape(message)):
        SqlConnector("platform", **options)
