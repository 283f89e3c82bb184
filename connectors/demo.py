"""The demo connectors: a sample IoT cloud platform kept in one SQLite database.

:func:`seed_demo_database` writes the platform's database (users, their consents,
devices, the devices' telemetry and invoices) for the subjects in
:data:`DEMO_SUBJECTS`. Three connectors read it, each standing for one processor:
:class:`ProfileConnector` (accounts), :class:`DevicesConnector` (the device fleet)
and :class:`BillingConnector` (invoicing). They are registered through entry points
exactly like third-party connectors, and serve as the worked example of the SDK.
"""

from __future__ import annotations

import asyncio
import fcntl
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar, ParamSpec, TypeVar

from connectors.base import Connector
from connectors.errors import ConnectorError, PermanentError, TransientError
from connectors.items import Dataset, Item, Record, Subject

DEMO_SUBJECTS = ("alice", "bob", "carol")
"""The user ids the demo database holds data on."""

_BATCH_ROWS = 500
_BUSY_TIMEOUT_SECONDS = 5.0
_TRANSIENT_SQLITE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

_SCHEMA = (
    """CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        name TEXT NOT NULL,
        country TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE consents (
        user_id TEXT NOT NULL REFERENCES users (id),
        purpose TEXT NOT NULL,
        granted INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (user_id, purpose)
    )""",
    """CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL REFERENCES users (id),
        model TEXT NOT NULL,
        serial TEXT NOT NULL,
        registered_at TEXT NOT NULL
    )""",
    "CREATE INDEX devices_owner ON devices (owner_id)",
    """CREATE TABLE telemetry (
        device_id TEXT NOT NULL REFERENCES devices (id),
        ts INTEGER NOT NULL,
        temperature REAL NOT NULL,
        humidity REAL NOT NULL,
        PRIMARY KEY (device_id, ts)
    )""",
    """CREATE TABLE invoices (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id),
        issued_at TEXT NOT NULL,
        amount_cents INTEGER NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL
    )""",
    "CREATE INDEX invoices_user ON invoices (user_id)",
)

_PEOPLE = {
    "alice": ("Alice Martin", "FR"),
    "bob": ("Bob Jansen", "NL"),
    "carol": ("Carol Schmidt", "DE"),
}
_PURPOSES = ("marketing_email", "product_analytics", "research_panel")
_MODELS = ("Thermo S1", "Thermo S2", "AirSense Mini")
_EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
_TELEMETRY_ROWS_PER_DEVICE = 200
_TELEMETRY_INTERVAL = timedelta(minutes=15)


def seed_demo_database(path: Path) -> None:
    """Create the demo database at ``path`` unless it already holds tables.

    The content is the same on every run (a fixed seed, no clock), written in one
    transaction, so re-running on a seeded file changes nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (API and workers) may seed the same file at once; switching
    # to WAL needs the database to themselves, so they take turns on a lock file.
    with path.with_name(f"{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _seed(path)


def _seed(path: Path) -> None:
    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            if not _has_tables(connection):
                for statement in _SCHEMA:
                    connection.execute(statement)
                _insert_demo_rows(connection, random.Random(42))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()


def _has_tables(connection: sqlite3.Connection) -> bool:
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone()
    return found is not None


def _insert_demo_rows(connection: sqlite3.Connection, rng: random.Random) -> None:
    invoice_number = 0
    for user_id in DEMO_SUBJECTS:
        name, country = _PEOPLE[user_id]
        connection.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
            (user_id, f"{user_id}@example.com", name, country, _moment(rng, days=30)),
        )
        for purpose in sorted(rng.sample(_PURPOSES, rng.randint(2, 3))):
            connection.execute(
                "INSERT INTO consents VALUES (?, ?, ?, ?)",
                (user_id, purpose, int(rng.random() < 0.5), _moment(rng, days=365)),
            )
        for number in range(1, rng.randint(2, 3) + 1):
            _insert_device(connection, rng, f"{user_id}-dev-{number}", user_id)
        for _ in range(rng.randint(2, 4)):
            invoice_number += 1
            connection.execute(
                "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?)",
                (
                    f"INV-{invoice_number:04d}",
                    user_id,
                    _moment(rng, days=365),
                    rng.randrange(499, 4999),
                    "EUR",
                    rng.choice(("paid", "paid", "open")),
                ),
            )


def _insert_device(
    connection: sqlite3.Connection, rng: random.Random, device_id: str, owner_id: str
) -> None:
    registered = _EPOCH + timedelta(days=rng.randrange(30, 90))
    connection.execute(
        "INSERT INTO devices VALUES (?, ?, ?, ?, ?)",
        (
            device_id,
            owner_id,
            rng.choice(_MODELS),
            f"SN-{rng.randrange(10**8):08d}",
            registered.isoformat(),
        ),
    )
    start = int(registered.timestamp())
    step = int(_TELEMETRY_INTERVAL.total_seconds())
    connection.executemany(
        "INSERT INTO telemetry VALUES (?, ?, ?, ?)",
        [
            (
                device_id,
                start + reading * step,
                round(rng.gauss(21.0, 2.0), 2),
                round(rng.uniform(30.0, 60.0), 1),
            )
            for reading in range(_TELEMETRY_ROWS_PER_DEVICE)
        ],
    )


def _moment(rng: random.Random, *, days: int) -> str:
    """An ISO timestamp within ``days`` after the demo epoch."""
    return (_EPOCH + timedelta(seconds=rng.randrange(days * 86_400))).isoformat()


_P = ParamSpec("_P")
_T = TypeVar("_T")


class _SQLiteDemoConnector(Connector):
    """Streams each declared dataset from the demo database, one query per dataset.

    Subclasses map every dataset name to the rest of its query after the column
    list (``FROM ... WHERE ... = ? ORDER BY ...``, the ``?`` being the subject id);
    the selected columns are the dataset's ``fields``, so the two cannot drift.
    ``main_table`` is the table :meth:`check` probes.
    """

    main_table: ClassVar[str]
    queries: ClassVar[Mapping[str, str]]

    def __init__(self, name: str, *, database: str) -> None:
        super().__init__(name)
        self.database = Path(database)

    async def check(self) -> None:
        """Raise :class:`PermanentError` when the database file or the main table is missing."""
        connection = await self._run(self._connect)
        try:
            await self._run(connection.execute, f"SELECT 1 FROM {self.main_table} LIMIT 1")
        finally:
            connection.close()

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Yield the subject's rows, dataset by dataset, fetched in batches off the event loop."""
        connection = await self._run(self._connect)
        try:
            for dataset in self.datasets:
                columns = ", ".join(dataset.fields)
                sql = f"SELECT {columns} {self.queries[dataset.name]}"
                cursor = await self._run(connection.execute, sql, (subject.id,))
                while batch := await self._run(cursor.fetchmany, _BATCH_ROWS):
                    for row in batch:
                        yield Record(dataset.name, dict(zip(dataset.fields, row, strict=True)))
        finally:
            connection.close()

    def _connect(self) -> sqlite3.Connection:
        if not self.database.is_file():
            raise PermanentError(
                f"connector {self.name!r}: database file {self.database} does not exist"
            )
        return sqlite3.connect(
            f"{self.database.resolve().as_uri()}?mode=ro",
            uri=True,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_SECONDS,
        )

    async def _run(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call blocking ``function`` in a worker thread, mapping SQLite errors to ours."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._classify(exc) from exc

    def _classify(self, exc: sqlite3.Error) -> ConnectorError:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _TRANSIENT_SQLITE_CODES:
            return TransientError(f"connector {self.name!r}: database {self.database}: {exc}")
        return PermanentError(f"connector {self.name!r}: database {self.database}: {exc}")


class ProfileConnector(_SQLiteDemoConnector):
    """The account service: the subject's user record and consent choices."""

    categories: ClassVar[frozenset[str]] = frozenset({"identification", "consent"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "profile",
            "identification",
            "the account: email, name, country and sign-up time",
            ("id", "email", "name", "country", "created_at"),
        ),
        Dataset(
            "consents",
            "consent",
            "each processing purpose and whether the subject agreed to it",
            ("user_id", "purpose", "granted", "updated_at"),
        ),
    )
    main_table: ClassVar[str] = "users"
    queries: ClassVar[Mapping[str, str]] = {
        "profile": "FROM users WHERE id = ? ORDER BY id",
        "consents": "FROM consents WHERE user_id = ? ORDER BY purpose",
    }


class DevicesConnector(_SQLiteDemoConnector):
    """The device fleet: the subject's registered devices and everything they reported."""

    categories: ClassVar[frozenset[str]] = frozenset({"device", "telemetry"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "devices",
            "device",
            "devices registered to the subject's account",
            ("id", "owner_id", "model", "serial", "registered_at"),
        ),
        Dataset(
            "telemetry",
            "telemetry",
            "temperature and humidity readings reported by those devices",
            ("device_id", "ts", "temperature", "humidity"),
        ),
    )
    main_table: ClassVar[str] = "devices"
    queries: ClassVar[Mapping[str, str]] = {
        "devices": "FROM devices WHERE owner_id = ? ORDER BY id",
        "telemetry": (
            "FROM telemetry JOIN devices ON devices.id = telemetry.device_id"
            " WHERE devices.owner_id = ? ORDER BY telemetry.device_id, telemetry.ts"
        ),
    }


class BillingConnector(_SQLiteDemoConnector):
    """The billing system: invoices issued to the subject."""

    categories: ClassVar[frozenset[str]] = frozenset({"economic"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "invoices",
            "economic",
            "invoices issued to the subject, with amount and payment status",
            ("id", "user_id", "issued_at", "amount_cents", "currency", "status"),
        ),
    )
    main_table: ClassVar[str] = "invoices"
    queries: ClassVar[Mapping[str, str]] = {
        "invoices": "FROM invoices WHERE user_id = ? ORDER BY issued_at, id",
    }
