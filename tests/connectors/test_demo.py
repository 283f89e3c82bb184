"""The demo platform database and the four ``sql`` connectors declared over it."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Connector
from connectors.demo import DEMO_SUBJECTS, demo_connector_configs, seed_demo_database
from connectors.errors import Unidentified
from connectors.items import Record, Subject
from connectors.registry import build_connectors
from connectors.reports import FieldChange, RetentionRule
from connectors.sql import SqlConnector

TABLES = ("users", "consents", "devices", "telemetry", "invoices", "newsletter")
INVOICE_RULE = RetentionRule("tax law: invoices are kept 10 years", timedelta(days=3650))

# What each connector should return for a subject, queried independently of demo.py.
EXPECTED_QUERIES: dict[str, dict[str, str]] = {
    "profile": {
        "profile": (
            "SELECT id, email, name, country, created_at, processing_restricted"
            " FROM users WHERE id = :id"
        ),
        "consents": "SELECT * FROM consents WHERE user_id = :id ORDER BY purpose",
    },
    "devices": {
        "devices": "SELECT * FROM devices WHERE owner_id = :id ORDER BY id",
        "telemetry": (
            "SELECT device_id, ts, temperature, humidity FROM telemetry"
            " WHERE device_id IN (SELECT id FROM devices WHERE owner_id = :id)"
            " ORDER BY device_id, ts"
        ),
    },
    "billing": {
        "invoices": "SELECT * FROM invoices WHERE user_id = :id ORDER BY issued_at, id",
    },
    "newsletter": {
        "newsletter": "SELECT * FROM newsletter WHERE email = :email ORDER BY list",
    },
}
CONNECTORS = tuple(EXPECTED_QUERIES)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "demo.sqlite3"
    seed_demo_database(path)
    return path


@pytest.fixture
async def connectors(database: Path) -> AsyncIterator[dict[str, Connector]]:
    """The demo connectors, built through the registry as ``handover serve`` builds them."""
    built = build_connectors(list(demo_connector_configs(database)))
    for connector in built.values():
        await connector.open()
    yield built
    for connector in built.values():
        await connector.close()


def connect(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path))


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with connect(path) as connection:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in TABLES
        }


def expected_records(
    path: Path, connector: str, subject_id: str
) -> list[tuple[str, dict[str, Any]]]:
    with connect(path) as connection:
        connection.row_factory = sqlite3.Row
        params = {"id": subject_id, "email": f"{subject_id}@example.com"}
        return [
            (dataset, dict(row))
            for dataset, sql in EXPECTED_QUERIES[connector].items()
            for row in connection.execute(sql, params)
        ]


async def export(connector: Connector, subject_id: str) -> list[Record]:
    records = []
    async for item in connector.export(Subject(subject_id, email=f"{subject_id}@example.com")):
        assert isinstance(item, Record)
        records.append(item)
    return records


async def identified(connectors: dict[str, Connector], subject_id: str) -> Subject:
    """The subject known by id, with the email the ``profile`` identity source looks up."""
    found = await connectors["profile"].resolve(Subject(subject_id))
    return Subject(subject_id, email=found.get("email"))


# -- the database --------------------------------------------------------------------


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
            email = f"{subject}@example.com"
            assert 1 <= count("SELECT count(*) FROM newsletter WHERE email = ?", email) <= 2
        per_device = connection.execute(
            "SELECT count(*) FROM telemetry GROUP BY device_id"
        ).fetchall()
        assert per_device
        assert all(readings == 200 for (readings,) in per_device)
        assert len(per_device) == count("SELECT count(*) FROM devices")
        for table in TABLES:
            assert count(f"SELECT count(*) FROM {table} WHERE processing_restricted <> 0") == 0
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_seed_is_idempotent(database: Path) -> None:
    before = dump(database)

    seed_demo_database(database)

    assert dump(database) == before


def test_seed_is_deterministic(database: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite3"

    seed_demo_database(other)

    assert dump(other) == dump(database)


def test_seed_rebuilds_a_demo_database_of_an_older_schema(database: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite3"
    with connect(old) as connection, connection:
        connection.execute("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL)")
        connection.execute("INSERT INTO users VALUES ('mallory', 'm@example.com')")

    seed_demo_database(old)

    assert dump(old) == dump(database)


def test_configs_declare_four_sql_connectors(database: Path) -> None:
    configs = demo_connector_configs(database)

    assert [(c.name, c.type) for c in configs] == [
        ("profile", "sql"),
        ("devices", "sql"),
        ("billing", "sql"),
        ("newsletter", "sql"),
    ]
    assert configs[0].options["provides"] == {"email": "users.email"}
    assert [t["identity"] for t in configs[3].options["tables"]] == ["email"]
    assert demo_connector_configs(database) == configs  # the hash key is kept, not remade
    key_file = database.with_name(f"{database.name}.hash-key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert configs[0].options["hash_key"] == key_file.read_text()


# -- the connectors ------------------------------------------------------------------


@pytest.mark.parametrize("name", CONNECTORS)
@pytest.mark.parametrize("subject_id", DEMO_SUBJECTS)
async def test_export_yields_exactly_the_subjects_rows(
    database: Path, connectors: dict[str, Connector], name: str, subject_id: str
) -> None:
    records = await export(connectors[name], subject_id)

    assert [(r.dataset, dict(r.data)) for r in records] == expected_records(
        database, name, subject_id
    )
    assert records
    others = set(DEMO_SUBJECTS) - {subject_id}
    assert not [r for r in records for v in r.data.values() if any(o in str(v) for o in others)]


async def test_profile_is_the_identity_source_of_the_email_keyed_newsletter(
    connectors: dict[str, Connector],
) -> None:
    assert {name: c.identifiers for name, c in connectors.items()} == {
        "profile": {"id"},
        "devices": {"id"},
        "billing": {"id"},
        "newsletter": {"email"},
    }
    assert {name: c.provides for name, c in connectors.items() if c.provides} == {
        "profile": {"email"}
    }
    for subject_id in DEMO_SUBJECTS:
        assert await connectors["profile"].resolve(Subject(subject_id)) == {
            "email": f"{subject_id}@example.com"
        }
    assert await connectors["profile"].resolve(Subject("dave")) == {}


async def test_the_newsletter_needs_the_email_the_profile_provides(
    database: Path, connectors: dict[str, Connector]
) -> None:
    newsletter = connectors["newsletter"]
    before = dump(database)

    with pytest.raises(Unidentified, match="'newsletter' needs the subject's email"):
        await anext(newsletter.export(Subject("carol")))
    with pytest.raises(Unidentified, match="'newsletter' needs the subject's email"):
        await newsletter.erase(Subject("carol"), dry_run=False, retention={})
    carol = await identified(connectors, "carol")
    records = [item async for item in newsletter.export(carol)]

    assert dump(database) == before
    assert [("newsletter", dict(r.data)) for r in records if isinstance(r, Record)] == (
        expected_records(database, "newsletter", "carol")
    )
    assert records


@pytest.mark.parametrize("name", CONNECTORS)
async def test_export_of_unknown_subject_yields_nothing(
    connectors: dict[str, Connector], name: str
) -> None:
    assert await export(connectors[name], "dave") == []


@pytest.mark.parametrize("name", CONNECTORS)
async def test_records_follow_the_declared_datasets(
    connectors: dict[str, Connector], name: str
) -> None:
    connector = connectors[name]

    records = await export(connector, "alice")

    for record in records:
        assert tuple(record.data) == connector.dataset(record.dataset).fields
    names = [r.dataset for r in records]
    runs = [dataset for i, dataset in enumerate(names) if i == 0 or names[i - 1] != dataset]
    assert runs == [d.name for d in connector.datasets]
    assert {d.category for d in connector.datasets} == connector.categories
    assert isinstance(connector, SqlConnector)


@pytest.mark.parametrize("name", CONNECTORS)
async def test_check_passes_on_the_seeded_database(
    connectors: dict[str, Connector], name: str
) -> None:
    await connectors[name].check()


async def test_erasure_anonymises_the_profile_deletes_devices_and_keeps_invoices(
    database: Path, connectors: dict[str, Connector]
) -> None:
    held = {name: expected_records(database, name, "alice") for name in CONNECTORS}
    bob = {name: expected_records(database, name, "bob") for name in CONNECTORS}
    subject = Subject("alice", email="alice@example.com")
    retention = {"invoices": INVOICE_RULE}

    reports = {
        name: await connector.erase(subject, dry_run=False, retention=retention)
        for name, connector in connectors.items()
    }

    def number(name: str, dataset: str) -> int:
        return len([row for held_dataset, row in held[name] if held_dataset == dataset])

    assert reports["profile"].dataset("profile").anonymised == 1
    assert reports["profile"].dataset("consents").deleted == number("profile", "consents")
    assert reports["devices"].dataset("devices").deleted == number("devices", "devices")
    assert reports["devices"].dataset("telemetry").deleted == number("devices", "telemetry")
    invoices = reports["billing"].dataset("invoices")
    assert (invoices.deleted, invoices.retained) == (0, number("billing", "invoices"))
    assert reports["newsletter"].dataset("newsletter").deleted == number("newsletter", "newsletter")
    assert number("newsletter", "newsletter") > 0
    assert invoices.legal_basis == INVOICE_RULE.legal_basis
    with connect(database) as connection:
        key = demo_connector_configs(database)[0].options["hash_key"]
        digest = hmac.new(key.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
        assert connection.execute(
            "SELECT email, name, country FROM users WHERE id = 'alice'"
        ).fetchall() == [(digest, None, "XX")]
        assert connection.execute(
            "SELECT DISTINCT processing_restricted FROM invoices WHERE user_id = 'alice'"
        ).fetchall() == [(1,)]
    left = {name: await export(connector, "alice") for name, connector in connectors.items()}
    assert {name: {r.dataset for r in records} for name, records in left.items()} == {
        "profile": set(),
        "devices": set(),
        "billing": {"invoices"},
        "newsletter": set(),
    }
    assert {name: expected_records(database, name, "bob") for name in CONNECTORS} == bob
    again = await connectors["profile"].erase(subject, dry_run=False, retention=retention)
    assert [(e.deleted, e.anonymised) for e in again.datasets] == [(0, 0), (0, 0)]


async def test_restriction_blocks_the_subject_everywhere(
    database: Path, connectors: dict[str, Connector]
) -> None:
    bob = await identified(connectors, "bob")
    reports = {
        name: await connector.restrict(bob, dry_run=False) for name, connector in connectors.items()
    }

    assert all(report.supported and report.note is None for report in reports.values())
    with connect(database) as connection:
        for table, column in (
            ("users", "id"),
            ("consents", "user_id"),
            ("devices", "owner_id"),
            ("invoices", "user_id"),
        ):
            flags = dict(
                connection.execute(
                    f"SELECT {column}, max(processing_restricted) FROM {table} GROUP BY {column}"
                ).fetchall()
            )
            assert flags == {"alice": 0, "bob": 1, "carol": 0}
        subscriptions = dict(
            connection.execute(
                "SELECT email, max(processing_restricted) FROM newsletter GROUP BY email"
            ).fetchall()
        )
        assert subscriptions == {
            "alice@example.com": 0,
            "bob@example.com": 1,
            "carol@example.com": 0,
        }
        blocked_readings = connection.execute(
            "SELECT count(*) FROM telemetry WHERE processing_restricted = 1"
        ).fetchone()[0]
    assert blocked_readings == reports["devices"].restricted["telemetry"] > 0


async def test_telemetry_of_a_long_history_streams_every_row(
    database: Path, connectors: dict[str, Connector]
) -> None:
    with connect(database) as connection, connection:
        connection.executemany(
            "INSERT INTO telemetry (device_id, ts, temperature, humidity)"
            " VALUES ('alice-dev-1', ?, 20.5, 40.0)",
            [(2_000_000_000 + second,) for second in range(20_000)],
        )

    records = await export(connectors["devices"], "alice")

    telemetry = [(r.data["device_id"], r.data["ts"]) for r in records if r.dataset == "telemetry"]
    expected = [
        (row["device_id"], row["ts"])
        for dataset, row in expected_records(database, "devices", "alice")
        if dataset == "telemetry"
    ]
    assert len(telemetry) > 20_000
    assert telemetry == expected


async def test_an_objection_to_direct_marketing_withdraws_the_marketing_email_consent(
    database: Path, connectors: dict[str, Connector]
) -> None:
    def marketing() -> dict[str, tuple[int, str]]:
        with connect(database) as connection:
            rows = connection.execute(
                "SELECT user_id, granted, updated_at FROM consents"
                " WHERE purpose = 'marketing_email'"
            ).fetchall()
        return {user: (granted, updated) for user, granted, updated in rows}

    before = dump(database)
    seeded = marketing()
    assert "alice" not in seeded and seeded["carol"][0] == 1  # the seed, as the demo shows it
    profile = connectors["profile"]
    assert profile.objection_purposes == {"direct_marketing", "analytics", "research"}

    reports = {}
    for name in ("alice", "carol"):
        subject = await identified(connectors, name)
        reports[name] = await profile.object(subject, ["direct_marketing"])
        assert await profile.objections_in_force(subject, ["direct_marketing"]) == {
            "direct_marketing": True
        }

    for report in reports.values():
        entry = report.purpose("direct_marketing")
        assert entry is not None and (entry.targets, entry.stopped) == (("marketing_email",), 1)
    after = marketing()
    assert after["alice"][0] == 0 and after["carol"][0] == 0  # recorded, and withdrawn
    assert after["alice"][1] > "2026" and after["carol"][1] > "2026"
    assert after["bob"] == seeded["bob"]
    exported = {
        r.data["purpose"]: r.data["granted"]
        for r in await export(profile, "alice")
        if r.dataset == "consents"
    }
    assert exported["marketing_email"] == 0
    unchanged = {t: rows for t, rows in dump(database).items() if t != "consents"}
    assert unchanged == {t: rows for t, rows in before.items() if t != "consents"}
    again = await profile.object(await identified(connectors, "carol"), ["direct_marketing"])
    assert again.purposes[0].stopped == 0
    alice = await identified(connectors, "alice")
    for name in ("devices", "billing", "newsletter"):
        answer = await connectors[name].object(alice, ["direct_marketing"])
        assert [p.supported for p in answer.purposes] == [False]


async def test_a_rectification_of_the_name_shows_in_a_fresh_export(
    database: Path, connectors: dict[str, Connector]
) -> None:
    profile = connectors["profile"]
    assert {(r.field, r.type, r.identity) for r in profile.rectifiable} == {
        ("name", "text", False),
        ("email", "email", True),
        ("country", "text", False),
    }
    alice = await identified(connectors, "alice")
    change = FieldChange("profile", "name", "Alice Dupont")
    report = await profile.rectify(alice, [change])
    assert report.fields[0].changed == 1
    assert await profile.rectifications_in_force(alice, [change]) == [True]
    names = {
        r.data["id"]: r.data["name"]
        for r in await export(profile, "alice")
        if r.dataset == "profile"
    }
    assert names == {"alice": "Alice Dupont"}
    with connect(database) as connection:
        others = dict(connection.execute("SELECT id, name FROM users WHERE id != 'alice'"))
    assert others == {"bob": "Bob Jansen", "carol": "Carol Schmidt"}


async def test_a_lifted_restriction_unblocks_the_subject_everywhere(
    database: Path, connectors: dict[str, Connector]
) -> None:
    bob = await identified(connectors, "bob")
    for connector in connectors.values():
        await connector.restrict(bob, dry_run=False)
    lifted = {name: await c.lift_restriction(bob) for name, c in connectors.items()}
    again = {name: await c.lift_restriction(bob) for name, c in connectors.items()}

    assert all(report.supported for report in lifted.values())
    assert lifted["profile"].restricted == {"profile": 1, "consents": 3}
    assert all(sum(report.restricted.values()) == 0 for report in again.values())
    with connect(database) as connection:
        for table in ("users", "consents", "devices", "telemetry", "invoices", "newsletter"):
            flagged = connection.execute(
                f"SELECT count(*) FROM {table} WHERE processing_restricted != 0"
            ).fetchone()[0]
            assert flagged == 0, table
