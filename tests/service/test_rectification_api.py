"""Rectification (GDPR Art. 16) over HTTP: only declared fields, values of their type, staff
approval for identity fields, read back at each processor, a signed receipt without values."""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.demo import demo_connector_configs, seed_demo_database
from connectors.registry import build_connectors
from connectors.testing import MemoryConnector
from jobs.notices import compose
from tests.service.conftest import Api, ApiFactory
from tests.service.test_api import download_archive
from tests.service.test_objection_api import receipt_of

SUPPORT = ("support",)


def platform() -> dict[str, MemoryConnector]:
    return {
        "crm": MemoryConnector(
            "crm",
            records={
                "alice": {"contacts": [{"id": 1, "name": "Alice Martin", "email": "a@x.org"}]},
                "bob": {"contacts": [{"id": 2, "name": "Bob Jansen"}]},
            },
            rectifiable={
                "contacts.name": "text",
                "contacts.email": "email",
                "contacts.vip": "boolean",
                "contacts.visits": "integer",
            },
        ),
        "billing": MemoryConnector("billing", records={"alice": {"invoices": [{"id": "i-1"}]}}),
    }


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(platform())


def change(field: str, value: Any, connector: str = "crm") -> dict[str, Any]:
    return {"connector": connector, "dataset": "contacts", "field": field, "value": value}


async def rectify(api: Api, *changes: dict[str, Any], **body: Any) -> dict[str, Any]:
    status, headers, job = await api.request(
        "POST", "/v1/rectifications", json={"changes": list(changes), **body}
    )
    assert status == 202, job
    assert headers["Location"] == f"/v1/jobs/{job['id']}"
    return job  # type: ignore[no-any-return]


def records(api: Api, subject: str = "alice") -> list[dict[str, Any]]:
    crm = api.resources.connectors["crm"]
    assert isinstance(crm, MemoryConnector)
    return [dict(row) for row in crm.records[subject]["contacts"]]


async def test_a_rectification_runs_at_the_named_connector_and_signs_a_receipt_without_values(
    api: Api, tmp_path: Path
) -> None:
    job = await rectify(
        api, change("name", "Alice Dupont"), change("vip", True), reason="I married"
    )
    assert job["kind"] == "rectification" and job["status"] == "queued"
    assert list(job["connectors"]) == ["crm"]  # only the processors the changes name
    assert "new_values" not in job and "Alice Dupont" not in orjson.dumps(job).decode()

    done = await api.wait(job["id"])

    assert done["status"] == "succeeded", done
    assert records(api) == [{"id": 1, "name": "Alice Dupont", "email": "a@x.org", "vip": True}]
    assert records(api, "bob") == [{"id": 2, "name": "Bob Jansen"}]
    report = done["connectors"]["crm"]["report"]
    assert [(f["field"], f["changed"], f["verified"]) for f in report["fields"]] == [
        ("name", 1, True),
        ("vip", 1, True),
    ]
    receipt = await receipt_of(api, job["id"], tmp_path)
    assert receipt["kind"] == "rectification"
    assert receipt["job"]["fields"] == [
        {"connector": "crm", "dataset": "contacts", "field": "name"},
        {"connector": "crm", "dataset": "contacts", "field": "vip"},
    ]
    assert receipt["job"]["approval_needed"] is False
    signed = orjson.dumps(receipt).decode()
    assert "Alice Dupont" not in signed and "Alice Martin" not in signed
    assert "I married" not in signed
    stored = await api.resources.store.get(job["id"])
    assert stored.new_values == []  # forgotten once the job ended


async def test_an_identity_field_waits_for_support_who_approves_or_rejects(
    api: Api, tmp_path: Path
) -> None:
    job = await rectify(api, change("email", "alice@new.example"))
    assert job["status"] == "awaiting_confirmation"
    assert job["options"]["approval_needed"] is True
    url = f"/v1/jobs/{job['id']}"
    status, _, body = await api.request("POST", f"{url}/confirm")
    assert status == 409 and "support decides it" in body["detail"], body
    # Deciding staff see the new value; the subject never does.
    assert (await api.job(job["id"], sub="s1", roles=SUPPORT))["new_values"] == [
        {
            "connector": "crm",
            "dataset": "contacts",
            "field": "email",
            "identity": True,
            "value": "alice@new.example",
        }
    ]
    assert "alice@new.example" not in orjson.dumps(await api.job(job["id"])).decode()
    status, _, problem = await api.request(
        "POST", f"{url}/decide", sub="s1", roles=SUPPORT, json={"upheld": True}
    )
    assert status == 422 and problem["errors"][0]["field"] == "verified_by", problem
    how = "confirmation mail to the new address answered"
    status, _, approved = await api.request(
        "POST", f"{url}/decide", sub="s1", roles=SUPPORT, json={"upheld": True, "verified_by": how}
    )
    assert status == 200, approved
    assert "new_values" not in approved
    assert (await api.wait(job["id"]))["status"] == "succeeded"
    assert records(api)[0]["email"] == "alice@new.example"
    assert "new_values" not in await api.job(job["id"], sub="s1", roles=SUPPORT)
    receipt = await receipt_of(api, job["id"], tmp_path)
    assert receipt["job"]["decision"]["verified_by"] == how
    assert "alice@new.example" not in orjson.dumps(receipt).decode()

    other = await rectify(api, change("email", "alice@other.example"))
    status, _, problem = await api.request(
        "POST", f"/v1/jobs/{other['id']}/decide", sub="s1", roles=SUPPORT, json={"upheld": False}
    )
    assert status == 422 and problem["errors"][0]["field"] == "grounds", problem
    status, _, refused = await api.request(
        "POST",
        f"/v1/jobs/{other['id']}/decide",
        sub="s1",
        roles=SUPPORT,
        json={"upheld": False, "grounds": "the address on file was verified last week"},
    )
    assert status == 200 and refused["status"] == "refused", refused
    assert refused["refusal"]["grounds"] == "data_accurate"
    assert records(api)[0]["email"] == "alice@new.example"
    stored = await api.resources.store.get(other["id"])
    assert stored.new_values == []


async def test_neither_the_requester_nor_the_subject_decides_the_change(api: Api) -> None:
    status, _, by_staff = await api.request(
        "POST",
        "/v1/rectifications",
        sub="s1",
        roles=SUPPORT,
        json={"changes": [change("email", "alice@new.example")], "subject": "alice"},
    )
    assert status == 202, by_staff
    by_subject = await rectify(api, change("email", "alice@other.example"))
    decision = {"upheld": True, "verified_by": "called the subject back"}
    for job, sub in [(by_staff, "s1"), (by_subject, "alice")]:
        status, _, problem = await api.request(
            "POST", f"/v1/jobs/{job['id']}/decide", sub=sub, roles=SUPPORT, json=decision
        )
        assert status == 409 and problem["rule"] == "decided-by-requester", problem
        assert (await api.job(job["id"], sub="s2", roles=SUPPORT))["status"] == (
            "awaiting_confirmation"
        )
    status, _, decided = await api.request(
        "POST", f"/v1/jobs/{by_staff['id']}/decide", sub="s2", roles=SUPPORT, json=decision
    )
    assert status == 200 and decided["status"] == "queued", decided


async def test_a_failed_rectification_is_not_retried_the_subject_asks_again(
    api_factory: ApiFactory,
) -> None:
    crm = platform()["crm"]
    crm.fail = "the CRM refused the write"
    api = await api_factory({"crm": crm})
    job = await rectify(api, change("name", "Alice Dupont"))
    assert (await api.wait(job["id"]))["status"] == "failed"
    crm.fail = None
    status, headers, problem = await api.request(
        "POST", f"/v1/jobs/{job['id']}/retry", sub="s1", roles=SUPPORT
    )
    assert status == 409, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["rule"] == "rectification-not-retried", problem
    assert "ask for the change again" in problem["detail"]
    assert (await api.job(job["id"], sub="s1", roles=SUPPORT))["status"] == "failed"


async def test_a_field_with_no_record_is_unverified_and_the_subject_is_not_told_corrected(
    api: Api,
) -> None:
    status, _, job = await api.request(
        "POST", "/v1/rectifications", sub="dave", json={"changes": [change("name", "Dave")]}
    )
    assert status == 202, job
    done = await api.wait(job["id"], sub="dave")
    assert done["status"] == "succeeded", done
    report = done["connectors"]["crm"]["report"]
    assert [(f["field"], f["changed"], f["verified"]) for f in report["fields"]] == [
        ("name", 0, None)
    ]
    assert report["fields"][0]["note"] == "no such record: nothing changed"
    assert report["verification"]["passed"] is None
    stored = await api.resources.store.get(job["id"])
    for language in ("en", "fr"):
        message, _, _ = compose(
            api.resources.settings, stored, "completed", "completed:1", language, "d@x.org", {}
        )
        body = message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert "has been corrected" not in text and "personnelles ont été rectifiées" not in text
        assert ("nothing was changed" in text) == (language == "en"), text
        assert "rectifiées" not in str(message["Subject"]), message["Subject"]
    english, _, _ = compose(
        api.resources.settings, stored, "completed", "completed:1", "en", "d@x.org", {}
    )
    assert english["Subject"] == "Your correction request has been handled"


async def test_every_change_waits_when_the_setting_says_all(api_factory: ApiFactory) -> None:
    api = await api_factory(platform(), rectification_approval="all")
    job = await rectify(api, change("name", "Alice Dupont"))
    assert job["status"] == "awaiting_confirmation"


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        (change("name", 42), "changes[0].value", "expected text, got an integer"),
        (change("visits", "many"), "changes[0].value", "expected an integer, got text"),
        (change("vip", 1), "changes[0].value", "expected true or false, got an integer"),
        (change("email", "not-an-address"), "changes[0].value", "expected an email address"),
        (change("id", 3), "changes[0].field", "contacts.id is not rectifiable at crm"),
        (change("name", "X", connector="nope"), "changes[0].connector", "unknown connector"),
        (change("name", "   "), "changes[0].value", "expected text"),
    ],
)
async def test_bad_input_is_a_problem_naming_the_change(
    api: Api, bad: dict[str, Any], field: str, words: str
) -> None:
    status, headers, problem = await api.request(
        "POST", "/v1/rectifications", json={"changes": [bad]}
    )
    assert status == 422, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["errors"][0]["field"] == field, problem
    assert words in problem["errors"][0]["message"], problem


async def test_a_field_named_twice_or_no_change_at_all_is_refused(api: Api) -> None:
    twice = [change("name", "A"), change("name", "B")]
    status, _, problem = await api.request("POST", "/v1/rectifications", json={"changes": twice})
    assert status == 422 and problem["errors"][0]["field"] == "changes[1].field", problem
    status, _, problem = await api.request("POST", "/v1/rectifications", json={"changes": []})
    assert status == 422 and problem["errors"][0]["field"] == "changes", problem


async def test_connectors_list_what_may_be_rectified(api: Api) -> None:
    status, _, listed = await api.request("GET", "/v1/connectors")
    assert status == 200
    crm = next(c for c in listed["connectors"] if c["name"] == "crm")
    assert {"dataset": "contacts", "field": "email", "type": "email", "identity": True} in crm[
        "rectifiable"
    ]


async def test_on_the_demo_platform_a_fresh_export_shows_the_new_name(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    database = tmp_path / "demo.sqlite3"
    seed_demo_database(database)
    demo = build_connectors(list(demo_connector_configs(database)))
    async with contextlib.AsyncExitStack() as opened:
        for connector in demo.values():
            await connector.open()
            opened.push_async_callback(connector.close)
        api = await api_factory(demo)
        body = {"connector": "profile", "dataset": "profile", "field": "name", "value": "Alice D."}
        job = await rectify(api, body)
        done = await api.wait(job["id"])
        assert done["status"] == "succeeded", (done["error"], done["connectors"])
        assert list(done["connectors"]) == ["profile"]
        await receipt_of(api, job["id"], tmp_path)
        export = await api.export()
        assert (await api.wait(export["id"]))["status"] == "succeeded"
        archive, _ = await download_archive(api, export["id"])
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        profile = orjson.loads(zipped.read("profile/profile.json"))
    assert [row["name"] for row in profile] == ["Alice D."]
