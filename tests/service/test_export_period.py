"""``since``/``until`` on ``POST /v1/exports``: checked (a problem naming the field), applied
by each connector that can, and stated in the signed manifest per processor: the range,
the datasets it was applied to and those exported whole.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from connectors.sql import SqlConnector
from connectors.testing import MemoryConnector
from tests.connectors.test_periods import (
    recording_api,
    seeded,
    since_only_connector,
    sql_connector,
)
from tests.service.conftest import ApiFactory


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"since": "2026-11-01"}, "since", "timezone"),
        ({"since": "2026-11-01T00:00:00"}, "since", "timezone"),
        ({"until": "last month"}, "until", "datetime"),
        (
            {"since": "2026-12-01T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
            "until",
            "must come after since",
        ),
        (
            {"since": "2026-11-01T00:00:00Z", "until": "2026-11-01T01:00:00+01:00"},
            "until",
            "must come after since",
        ),
    ],
)
async def test_a_range_that_is_not_one_is_a_problem_naming_the_field(
    api_factory: ApiFactory, body: dict[str, str], field: str, says: str
) -> None:
    api = await api_factory({"crm": MemoryConnector("crm")}, worker=False)
    status, headers, problem = await api.request("POST", "/v1/exports", json=body)
    assert status == 422, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert [error["field"] for error in problem["errors"]] == [field]
    assert says in problem["errors"][0]["message"]


async def test_the_manifest_states_the_range_each_processor_applied(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": "alice"}]}})
    platform = sql_connector(seeded(tmp_path / "platform.sqlite3"))
    await platform.open()
    try:
        await export_in_november(api_factory, crm, platform)
    finally:
        await platform.close()


async def export_in_november(
    api_factory: ApiFactory, crm: MemoryConnector, platform: SqlConnector
) -> None:
    api = await api_factory({"crm": crm, "platform": platform})
    job = await api.export(since="2026-11-01T00:00:00Z", until="2026-12-01T01:00:00+01:00")
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", (done["error"], done["connectors"])
    assert done["options"]["scope"]["period"] == {
        "since": "2026-11-01T00:00:00+00:00",
        "until": "2026-12-01T00:00:00+00:00",
    }
    archive = await api.archive(job["id"], api.auth())
    manifest = orjson.loads(archive.read("manifest.json"))
    assert manifest["scope"]["period"] == {
        "since": "2026-11-01T00:00:00Z",
        "until": "2026-12-01T00:00:00Z",
    }
    stated = {entry["name"]: entry["period"] for entry in manifest["connectors"]}
    assert stated["platform"] == {
        "since": "2026-11-01T00:00:00Z",
        "until": "2026-12-01T00:00:00Z",
        "applied_to": ["logins", "readings"],
        "not_applied_to": ["notes", "users"],
    }
    assert stated["crm"]["applied_to"] == []
    assert stated["crm"]["not_applied_to"] == ["contacts"]
    readings = orjson.loads(archive.read("platform/readings.json"))
    assert [row["n"] for row in readings] == [1, 2]
    assert len(orjson.loads(archive.read("platform/notes.json"))) == 4


async def test_an_export_without_a_range_states_none(api_factory: ApiFactory) -> None:
    crm = MemoryConnector("crm", records={"alice": {"contacts": [{"id": "alice"}]}})
    api = await api_factory({"crm": crm})
    job = await api.export()
    assert (await api.wait(job["id"]))["status"] == "succeeded"
    manifest = orjson.loads((await api.archive(job["id"], api.auth())).read("manifest.json"))
    assert "period" not in manifest["scope"]
    assert all("period" not in entry for entry in manifest["connectors"])


async def test_a_range_half_applied_is_stated_as_not_applied(api_factory: ApiFactory) -> None:
    seen: list[dict[str, str]] = []
    async with recording_api(seen) as base_url:
        events = since_only_connector(base_url)
        await events.open()
        try:
            api = await api_factory({"events": events})
            job = await api.export(since="2026-11-01T00:00:00Z", until="2026-12-01T00:00:00Z")
            done = await api.wait(job["id"])
            archive = await api.archive(job["id"], api.auth())
        finally:
            await events.close()
    assert done["status"] == "succeeded", (done["error"], done["connectors"])
    manifest = orjson.loads(archive.read("manifest.json"))
    stated = {entry["name"]: entry["period"] for entry in manifest["connectors"]}
    assert stated["events"]["applied_to"] == []
    assert stated["events"]["not_applied_to"] == ["events"]
    assert seen == [{}]
