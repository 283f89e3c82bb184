"""An export's time range at the connectors that can apply it: the ``sql`` connector by
each table's ``time_column``, the ``http`` connector by ``{since}``/``{until}`` in a
dataset's query parameters. What a connector cannot filter it exports whole, and its
datasets say so (``by_period``): the manifest is built from that declaration.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors.errors import PermanentError
from connectors.http import HttpConnector
from connectors.items import Period, Record, Subject
from connectors.sql import SqlConnector

DAY = datetime(2026, 11, 1, tzinfo=UTC)
NOVEMBER = Period(DAY, DAY + timedelta(days=30))


def seeded(path: Path) -> str:
    """Rows for alice on 2026-10-31, 11-01 00:00 (the first moment in), 11-30 23:59, 12-01."""
    moments = [
        DAY - timedelta(hours=1),
        DAY,
        DAY + timedelta(days=30, seconds=-1),
        DAY + timedelta(days=30),
    ]
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT)")
        db.execute("CREATE TABLE readings (n INTEGER PRIMARY KEY, user_id TEXT, at TEXT)")
        db.execute("CREATE TABLE logins (n INTEGER PRIMARY KEY, user_id TEXT, at INTEGER)")
        db.execute("CREATE TABLE notes (n INTEGER PRIMARY KEY, user_id TEXT, at TEXT)")
        db.execute("INSERT INTO users VALUES ('alice', 'Alice')")
        for n, moment in enumerate(moments):
            db.execute(
                "INSERT INTO readings VALUES (?, 'alice', ?)",
                (n, moment.isoformat().replace("+00:00", "Z")),
            )
            db.execute("INSERT INTO logins VALUES (?, 'alice', ?)", (n, int(moment.timestamp())))
            db.execute("INSERT INTO notes VALUES (?, 'alice', ?)", (n, moment.isoformat()))
        db.execute("INSERT INTO readings VALUES (9, 'alice', NULL)")
    return f"sqlite:///{path}"


def sql_connector(url: str) -> SqlConnector:
    def table(name: str, time_column: str | None = None) -> dict[str, Any]:
        spec = {
            "table": name,
            "category": "usage",
            "subject_column": "user_id" if name != "users" else "id",
            "erase": "delete",
        }
        return spec | ({"time_column": time_column} if time_column else {})

    return SqlConnector(
        "platform",
        url=url,
        tables=[
            table("users"),
            table("readings", "at"),
            table("logins", "at"),
            table("notes"),
        ],
    )


async def exported(connector: Any, subject: Subject) -> dict[str, list[Any]]:
    await connector.open()
    try:
        found: dict[str, list[Any]] = {}
        async for item in connector.export(subject):
            assert isinstance(item, Record)
            found.setdefault(item.dataset, []).append(item.data)
        return found
    finally:
        await connector.close()


async def test_the_sql_connector_applies_the_range_to_tables_with_a_time_column(
    tmp_path: Path,
) -> None:
    connector = sql_connector(seeded(tmp_path / "platform.sqlite3"))
    declared = {d.name: d.by_period for d in connector.datasets}
    assert declared == {"users": False, "readings": True, "logins": True, "notes": False}

    everything = await exported(connector, Subject("alice"))
    assert [len(everything[name]) for name in ("users", "readings", "logins", "notes")] == [
        1,
        5,
        4,
        4,
    ]

    november = await exported(connector, Subject("alice", period=NOVEMBER))
    assert [row["n"] for row in november["readings"]] == [1, 2], "text: since in, until out"
    assert [row["n"] for row in november["logins"]] == [1, 2], "Unix seconds"
    assert len(november["notes"]) == 4, "no time column: every row"
    assert len(november["users"]) == 1

    open_ended = await exported(connector, Subject("alice", period=Period(since=DAY)))
    assert [row["n"] for row in open_ended["logins"]] == [1, 2, 3]


async def test_a_missing_time_column_is_named(tmp_path: Path) -> None:
    url = seeded(tmp_path / "platform.sqlite3")
    connector = SqlConnector(
        "platform",
        url=url,
        tables=[
            {
                "table": "notes",
                "category": "usage",
                "subject_column": "user_id",
                "erase": "delete",
                "time_column": "written_at",
            }
        ],
    )
    with pytest.raises(PermanentError, match=r"notes\.written_at"):
        await exported(connector, Subject("alice", period=NOVEMBER))


def test_a_period_must_be_aware_and_in_order() -> None:
    with pytest.raises(ValueError, match="time zone"):
        Period(since=datetime(2026, 11, 1))
    with pytest.raises(ValueError, match="since must come before until"):
        Period(DAY, DAY)
    assert NOVEMBER.statement() == {
        "since": "2026-11-01T00:00:00Z",
        "until": "2026-12-01T00:00:00Z",
    }


@asynccontextmanager
async def recording_api(seen: list[dict[str, str]]) -> AsyncIterator[str]:
    async def events(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        return web.json_response({"items": [{"id": 1}]})

    app = web.Application()
    app.router.add_get("/users/{id}/events", events)
    app.router.add_get("/users/{id}/profile", events)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def http_connector(base_url: str) -> HttpConnector:
    return HttpConnector(
        "events",
        base_url=base_url,
        datasets=[
            {
                "name": "events",
                "category": "usage",
                "path": "/users/{id}/events",
                "params": {"from": "{since}", "to": "{until}", "kind": "all"},
                "records": "/items",
            },
            {
                "name": "profile",
                "category": "identification",
                "path": "/users/{id}/profile",
                "records": "/items",
            },
        ],
        erase={"method": "DELETE", "path": "/users/{id}"},
    )


async def test_the_http_connector_sends_the_range_as_templated_parameters() -> None:
    seen: list[dict[str, str]] = []
    async with recording_api(seen) as base_url:
        connector = http_connector(base_url)
        assert {d.name: d.by_period for d in connector.datasets} == {
            "events": True,
            "profile": False,
        }
        await exported(connector, Subject("alice", period=NOVEMBER))
        assert seen == [
            {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z", "kind": "all"},
            {},
        ]
        seen.clear()
        await exported(connector, Subject("alice", period=Period(until=DAY)))
        assert seen == [{"to": "2026-11-01T00:00:00Z", "kind": "all"}, {}], "open end not sent"
        seen.clear()
        await exported(connector, Subject("alice"))
        assert seen == [{"kind": "all"}, {}]


def test_the_range_belongs_in_an_exports_parameters_only() -> None:
    with pytest.raises(PermanentError, match=r"unknown variable \{since\}"):
        HttpConnector(
            "events",
            base_url="https://api.example.com",
            datasets=[{"name": "events", "category": "usage", "path": "/users/{id}/{since}"}],
            erase={"method": "DELETE", "path": "/users/{id}"},
        )
    with pytest.raises(PermanentError, match=r"unknown variable \{until\}"):
        HttpConnector(
            "events",
            base_url="https://api.example.com",
            datasets=[{"name": "events", "category": "usage", "path": "/users/{id}"}],
            erase={"method": "DELETE", "path": "/users/{id}", "params": {"to": "{until}"}},
        )


def since_only_connector(base_url: str) -> HttpConnector:
    return HttpConnector(
        "events",
        base_url=base_url,
        datasets=[
            {
                "name": "events",
                "category": "usage",
                "path": "/users/{id}/events",
                "params": {"from": "{since}"},
                "records": "/items",
            }
        ],
        erase={"method": "DELETE", "path": "/users/{id}"},
    )


async def test_a_dataset_asked_for_a_bound_it_cannot_apply_is_exported_whole() -> None:
    seen: list[dict[str, str]] = []
    async with recording_api(seen) as base_url:
        connector = since_only_connector(base_url)
        (events,) = connector.datasets
        assert events.by_period and events.period_bounds == {"since"}
        assert not events.applies(NOVEMBER)  # ``until`` asked, and it has no parameter for it
        await exported(connector, Subject("alice", period=NOVEMBER))
        assert seen == [{}], "half a range is not applied: nothing is sent"
        seen.clear()
        assert events.applies(Period(since=DAY))
        await exported(connector, Subject("alice", period=Period(since=DAY)))
        assert seen == [{"from": "2026-11-01T00:00:00Z"}]


async def test_a_text_time_column_in_another_form_is_named_not_compared(tmp_path: Path) -> None:
    path = tmp_path / "platform.sqlite3"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE visits (n INTEGER PRIMARY KEY, user_id TEXT, at TEXT)")
        db.execute("INSERT INTO visits VALUES (1, 'alice', '2026-11-01T12:00:00Z')")
        # SQLite's CURRENT_TIMESTAMP form: a space, which sorts before the bounds' T.
        db.execute("INSERT INTO visits VALUES (2, 'alice', '2026-11-01 08:00:00')")
        db.execute("INSERT INTO visits VALUES (3, 'bob', '2026-11-01 08:00:00')")
    spec = {
        "table": "visits",
        "category": "usage",
        "subject_column": "user_id",
        "erase": "delete",
        "time_column": "at",
    }
    connector = SqlConnector("platform", url=f"sqlite:///{path}", tables=[spec])
    with pytest.raises(PermanentError, match=r"visits\.at holds times not in the form"):
        await exported(connector, Subject("alice", period=NOVEMBER))
    assert len((await exported(connector, Subject("alice")))["visits"]) == 2, "no range: whole"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE visits SET at = '2026-11-01T08:00:00.250Z' WHERE n = 2")
        db.execute("INSERT INTO visits VALUES (4, 'alice', '2026-11-30T23:00:00+01:00')")
    with pytest.raises(PermanentError, match=r"visits\.at holds times not in the form"):
        await exported(connector, Subject("alice", period=NOVEMBER))  # not in UTC
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE visits SET at = '2026-11-30T22:00:00+00:00' WHERE n = 4")
    november = await exported(connector, Subject("alice", period=NOVEMBER))
    assert [row["n"] for row in november["visits"]] == [1, 2, 4], "only alice's rows checked"
