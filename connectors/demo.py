"""The demo platform: a sample IoT cloud kept in one SQLite database, read by ``sql`` connectors.

:func:`seed_demo_database` writes the platform's database (users, their consents,
devices, the devices' telemetry, invoices and newsletter subscriptions) for the
subjects in :data:`DEMO_SUBJECTS`. :func:`demo_connector_configs` declares four
connectors of the built-in ``sql`` type over it, each standing for one processor:
``profile`` (accounts: anonymised on erasure, consents deleted), ``devices`` (the
fleet and its telemetry, deleted), ``billing`` (invoices: deleted, or blocked when
a retention rule keeps them) and ``newsletter`` (mailing-list subscriptions, keyed
by email address, deleted). ``profile`` is also an identity source: it provides the
subject's email from the users table, which is how ``newsletter`` finds a subject
known only by id. ``profile`` records objections (GDPR Art. 21) in ``consents``:
:data:`DEMO_PURPOSES` maps Handover's purposes to the platform's (``marketing_email``
is direct marketing), and lets the account's name, email and country be rectified
(GDPR Art. 16). They are the worked example of a declarative SQL connector.
"""

from __future__ import annotations

import fcntl
import os
import random
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.registry import ConnectorConfig

if TYPE_CHECKING:
    import sqlite3

DEMO_SUBJECTS = ("alice", "bob", "carol")
"""The user ids the demo database holds data on."""

#: Who the demo platform's controller is, as every demo archive's ``index.html`` says
#: (GDPR Art. 15(1)); ``HANDOVER_CONTROLLER`` and its kin win over it.
DEMO_CONTROLLER = {
    "controller": "Thermonet Demo SA, Rue de l'Exemple 12, 1000 Brussels, Belgium",
    "controller_contact": "privacy@thermonet.example, or by post to the address above",
    "dpo_contact": "Data Protection Officer, dpo@thermonet.example",
    "automated_decisions": (
        "No decision that has legal or similarly significant effects on you is taken by "
        "automated means (GDPR Art. 22). Your devices' readings trigger alerts you set "
        "yourself; usage analytics (Google Analytics, Hotjar, with your consent) measure "
        "how the product is used and decide nothing about you."
    ),
}

_SCHEMA_VERSION = 3
"""Bumped when the schema changes: an older demo database is rebuilt."""

_TABLES = ("newsletter", "telemetry", "invoices", "devices", "consents", "users")
_SCHEMA = (
    """CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT,
        name TEXT,
        country TEXT NOT NULL,
        created_at TEXT NOT NULL,
        processing_restricted INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE consents (
        user_id TEXT NOT NULL REFERENCES users (id),
        purpose TEXT NOT NULL,
        granted INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        processing_restricted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, purpose)
    )""",
    """CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL REFERENCES users (id),
        model TEXT NOT NULL,
        serial TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        processing_restricted INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX devices_owner ON devices (owner_id)",
    """CREATE TABLE telemetry (
        device_id TEXT NOT NULL REFERENCES devices (id),
        ts INTEGER NOT NULL,
        temperature REAL NOT NULL,
        humidity REAL NOT NULL,
        processing_restricted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (device_id, ts)
    )""",
    """CREATE TABLE invoices (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id),
        issued_at TEXT NOT NULL,
        amount_cents INTEGER NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL,
        processing_restricted INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX invoices_user ON invoices (user_id)",
    """CREATE TABLE newsletter (
        email TEXT NOT NULL,
        list TEXT NOT NULL,
        subscribed_at TEXT NOT NULL,
        processing_restricted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (email, list)
    )""",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)

_PEOPLE = {
    "alice": ("Alice Martin", "FR"),
    "bob": ("Bob Jansen", "NL"),
    "carol": ("Carol Schmidt", "DE"),
}
_PURPOSES = ("marketing_email", "product_analytics", "research_panel")
DEMO_PURPOSES = {
    "direct_marketing": ["marketing_email"],
    "analytics": ["product_analytics"],
    "research": ["research_panel"],
}
"""Handover's purposes, and the demo platform's consent purposes that stand for each."""
_MODELS = ("Thermo S1", "Thermo S2", "AirSense Mini")
_MAILING_LISTS = ("product_news", "firmware_updates", "energy_tips")
_EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
_TELEMETRY_ROWS_PER_DEVICE = 200
_TELEMETRY_INTERVAL = timedelta(minutes=15)


def seed_demo_database(path: Path) -> None:
    """Create the demo database at ``path`` unless it already holds the current schema.

    The content is the same on every run (a fixed seed, no clock), written in one
    transaction, so re-running on a seeded file changes nothing. A demo database
    written by an older version (another schema) is rebuilt.
    """
    with _demo_lock(path):
        _seed(path)


def demo_connector_configs(database: Path) -> tuple[ConnectorConfig, ...]:
    """The demo's connectors: ``profile``, ``devices``, ``billing`` and ``newsletter``.

    Each is a built-in ``sql`` connector; the key that hashes anonymised emails is
    made once per database and kept beside it (``<database>.hash-key``). ``profile``
    provides the subject's email (``users.email``) to ``newsletter``, keyed by it.
    """
    url = f"sqlite:///{database}"
    profile = {
        "url": url,
        "hash_key": _hash_key(database),
        "provides": {"email": "users.email"},
        "tables": deepcopy(_PROFILE_TABLES),
        "objection": {
            "table": "consents",
            "purpose_column": "purpose",
            "granted_column": "granted",
            "updated_column": "updated_at",
            "purposes": deepcopy(DEMO_PURPOSES),
        },
        **DEMO_PROCESSING["profile"],
    }
    devices = {"url": url, "tables": deepcopy(_DEVICES_TABLES), **DEMO_PROCESSING["devices"]}
    billing = {"url": url, "tables": deepcopy(_BILLING_TABLES), **DEMO_PROCESSING["billing"]}
    newsletter = {
        "url": url,
        "tables": deepcopy(_NEWSLETTER_TABLES),
        **DEMO_PROCESSING["newsletter"],
    }
    return (
        ConnectorConfig("profile", "sql", profile),
        ConnectorConfig("devices", "sql", devices),
        ConnectorConfig("billing", "sql", billing),
        ConnectorConfig("newsletter", "sql", newsletter),
    )


_US_TRANSFER = (
    "to the USA, under the EU-US Data Privacy Framework (the Commission's adequacy decision "
    "of 10 July 2023, GDPR Art. 45) and standard contractual clauses (Art. 46(2)(c))"
)
#: What each demo processor's configuration states about its processing (GDPR Art. 15(1),
#: (2)): the same words as deploy/handover.toml gives the docker-compose platform.
DEMO_PROCESSING: dict[str, dict[str, str]] = {
    "profile": {
        "purposes": "Running your account (sign-in, support) and recording the consents you gave",
        "legal_basis": "Art. 6(1)(b) GDPR, performance of the contract; for each purpose in "
        "your consents, Art. 6(1)(a), your consent",
        "recipient": "HubSpot, Inc. (USA), our customer relationship tool, as our processor; "
        "with your product_analytics consent, Google LLC (Google Analytics, USA) and Hotjar "
        "Ltd. (Malta) receive how you use the app, without your name or email",
        "retention": "As long as your account exists; a closed account is anonymised within "
        "30 days",
        "source": "You, at sign-up and in your account settings",
        "transfer": f"HubSpot, Inc. and Google LLC: {_US_TRANSFER}; Hotjar Ltd. through its US "
        "sub-processors, under standard contractual clauses (Art. 46(2)(c))",
    },
    "devices": {
        "purposes": "Operating your devices: showing their readings, alerts, firmware updates",
        "legal_basis": "Art. 6(1)(b) GDPR, performance of the contract",
        "recipient": "Our cloud hosting provider, as our processor, in the EU",
        "retention": "Devices as long as they are registered to you; readings 2 years",
        "source": "You registered the devices; the devices send their readings",
    },
    "billing": {
        "purposes": "Invoicing and collecting payment for your subscription",
        "legal_basis": "Art. 6(1)(b) GDPR, performance of the contract; Art. 6(1)(c), the "
        "legal obligation to keep accounts",
        "recipient": "Our payment service provider and our accountants, in the EU",
        "retention": "10 years from the invoice's date (tax law)",
        "source": "Issued by us from your subscription",
    },
    "newsletter": {
        "purposes": "Sending the newsletters you subscribed to",
        "legal_basis": "Art. 6(1)(a) GDPR, your consent, which you can withdraw at any time",
        "recipient": "HubSpot, Inc. (USA), which sends our emails as our processor",
        "retention": "Until you unsubscribe",
        "source": "You, when you subscribed",
        "transfer": f"HubSpot, Inc.: {_US_TRANSFER}",
    },
}


_BLOCK_COLUMN = "processing_restricted"
_PROFILE_TABLES: list[dict[str, Any]] = [
    {
        "table": "users",
        "dataset": "profile",
        "category": "identification",
        "description": "the account: email, name, country and sign-up time",
        "columns": ["id", "email", "name", "country", "created_at", _BLOCK_COLUMN],
        "column_descriptions": {
            "id": "your user id on the platform",
            "country": "the country you gave, as an ISO 3166 code",
            "created_at": "when you signed up (UTC)",
            _BLOCK_COLUMN: "1 if you asked for this data's processing to be restricted",
        },
        "subject_column": "id",
        "erase": "anonymise",
        "anonymise": {
            "email": "hash",
            "name": "null",
            "country": {"fixed": "XX"},
            "created_at": "keep",
        },
        "block_column": _BLOCK_COLUMN,
        "rectifiable": {"name": "text", "email": "email", "country": "text"},
    },
    {
        "table": "consents",
        "category": "consent",
        "description": "each processing purpose and whether the subject agreed to it",
        "columns": ["user_id", "purpose", "granted", "updated_at", _BLOCK_COLUMN],
        "column_descriptions": {
            "purpose": "what the consent is for",
            "granted": "1 if you agreed, 0 if you refused or withdrew",
            "updated_at": "when you last gave or withdrew it (UTC)",
        },
        "order_by": ["purpose"],
        "subject_column": "user_id",
        "erase": "delete",
        "block_column": _BLOCK_COLUMN,
    },
]
_DEVICES_TABLES: list[dict[str, Any]] = [
    {
        "table": "devices",
        "category": "device",
        "description": "devices registered to the subject's account",
        "columns": ["id", "owner_id", "model", "serial", "registered_at", _BLOCK_COLUMN],
        "column_descriptions": {
            "owner_id": "your user id",
            "serial": "the device's serial number",
            "registered_at": "when the device was added to your account (UTC)",
        },
        "subject_column": "owner_id",
        "erase": "delete",
        "block_column": _BLOCK_COLUMN,
    },
    {
        "table": "telemetry",
        "category": "telemetry",
        "description": "temperature and humidity readings reported by those devices",
        "columns": ["device_id", "ts", "temperature", "humidity"],
        "column_descriptions": {
            "device_id": "the device that took the reading",
            "ts": "when the reading was taken, in seconds since 1 January 1970 (UTC)",
            "temperature": "the temperature, in degrees Celsius",
            "humidity": "the relative humidity, in percent",
        },
        "series": {"time": "ts", "values": ["temperature", "humidity"], "by": "device_id"},
        "time_column": "ts",
        "through": [{"column": "device_id", "references": "devices.id"}],
        "subject_column": "owner_id",
        "erase": "delete",
        "block_column": _BLOCK_COLUMN,
    },
]
_BILLING_TABLES: list[dict[str, Any]] = [
    {
        "table": "invoices",
        "category": "economic",
        "description": "invoices issued to the subject, with amount and payment status",
        "columns": [
            "id",
            "user_id",
            "issued_at",
            "amount_cents",
            "currency",
            "status",
            _BLOCK_COLUMN,
        ],
        "column_descriptions": {
            "issued_at": "when the invoice was issued (UTC)",
            "amount_cents": "the amount, in cents of the currency",
            "status": "paid, or open while payment is due",
        },
        "order_by": ["issued_at", "id"],
        "time_column": "issued_at",
        "subject_column": "user_id",
        "erase": "delete",
        "block_column": _BLOCK_COLUMN,
    },
]
_NEWSLETTER_TABLES: list[dict[str, Any]] = [
    {
        "table": "newsletter",
        "category": "contact",
        "description": "the mailing lists the subject's email address is subscribed to",
        "columns": ["email", "list", "subscribed_at", _BLOCK_COLUMN],
        "column_descriptions": {
            "list": "the mailing list",
            "subscribed_at": "when you subscribed (UTC)",
        },
        "order_by": ["list"],
        "subject_column": "email",
        "identity": "email",
        "erase": "delete",
        "block_column": _BLOCK_COLUMN,
    },
]


@contextmanager
def _demo_lock(path: Path) -> Iterator[None]:
    """Take turns with other processes (API and workers) preparing the same demo files.

    Switching to WAL needs the database to themselves, and the hash key must be
    written once, so they hold a lock file beside the database meanwhile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(f"{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _hash_key(database: Path) -> str:
    """The demo database's own hash key, made on first use and readable only by its owner."""
    key_file = database.with_name(f"{database.name}.hash-key")
    with _demo_lock(database):
        if not key_file.exists():
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
        return key_file.read_text().strip()


def _seed(path: Path) -> None:
    # Imported here: every process imports this module (the demo's names), and SQLite is
    # about 1 MB of a worker's memory that only the demo, no configured connector, uses.
    import sqlite3

    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            if _schema_version(connection) != _SCHEMA_VERSION:
                for table in _TABLES:
                    connection.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in _SCHEMA:
                    connection.execute(statement)
                _insert_demo_rows(connection, random.Random(42))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()


def _schema_version(connection: sqlite3.Connection) -> int | None:
    """The demo schema's version, or None when the database holds no tables yet."""
    found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone()
    if found is None:
        return None
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def _insert_demo_rows(connection: sqlite3.Connection, rng: random.Random) -> None:
    invoice_number = 0
    for user_id in DEMO_SUBJECTS:
        name, country = _PEOPLE[user_id]
        connection.execute(
            "INSERT INTO users (id, email, name, country, created_at) VALUES (?, ?, ?, ?, ?)",
            (user_id, f"{user_id}@example.com", name, country, _moment(rng, days=30)),
        )
        for purpose in sorted(rng.sample(_PURPOSES, rng.randint(2, 3))):
            connection.execute(
                "INSERT INTO consents (user_id, purpose, granted, updated_at) VALUES (?, ?, ?, ?)",
                (user_id, purpose, int(rng.random() < 0.5), _moment(rng, days=365)),
            )
        for number in range(1, rng.randint(2, 3) + 1):
            _insert_device(connection, rng, f"{user_id}-dev-{number}", user_id)
        for _ in range(rng.randint(2, 4)):
            invoice_number += 1
            connection.execute(
                "INSERT INTO invoices (id, user_id, issued_at, amount_cents, currency, status)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    f"INV-{invoice_number:04d}",
                    user_id,
                    _moment(rng, days=365),
                    rng.randrange(499, 4999),
                    "EUR",
                    rng.choice(("paid", "paid", "open")),
                ),
            )
    for user_id in DEMO_SUBJECTS:
        for mailing_list in sorted(rng.sample(_MAILING_LISTS, rng.randint(1, 2))):
            connection.execute(
                "INSERT INTO newsletter (email, list, subscribed_at) VALUES (?, ?, ?)",
                (f"{user_id}@example.com", mailing_list, _moment(rng, days=365)),
            )


def _insert_device(
    connection: sqlite3.Connection, rng: random.Random, device_id: str, owner_id: str
) -> None:
    registered = _EPOCH + timedelta(days=rng.randrange(30, 90))
    connection.execute(
        "INSERT INTO devices (id, owner_id, model, serial, registered_at) VALUES (?, ?, ?, ?, ?)",
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
        "INSERT INTO telemetry (device_id, ts, temperature, humidity) VALUES (?, ?, ?, ?)",
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
