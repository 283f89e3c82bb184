"""Objection (GDPR Art. 21) over HTTP: direct marketing at once, other purposes on a decision,
verified at each processor, a signed receipt, the subject told."""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from connectors.demo import demo_connector_configs, seed_demo_database
from connectors.items import Subject
from connectors.registry import build_connectors
from connectors.testing import MemoryConnector
from jobs.settings import Secret
from tests.jobs.test_webhooks import SECRET, Receiver
from tests.mailserver import mail_server
from tests.polling import eventually
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory
from tests.service.test_api import download_archive
from tests.service.test_notices_api import arrived, smtp, subject_headers


class Forgetful(MemoryConnector):
    """A processor that says it stopped, and goes on processing: the read-back sees it."""

    async def objections_in_force(
        self, subject: Subject, purposes: Sequence[str]
    ) -> Mapping[str, bool]:
        return dict.fromkeys(purposes, False)


def platform() -> dict[str, MemoryConnector]:
    return {
        "crm": MemoryConnector(
            "crm",
            records={"alice": {"contacts": [{"id": 1}]}},
            objection_purposes=["direct_marketing", "analytics"],
        ),
        "billing": MemoryConnector("billing", records={"alice": {"invoices": [{"id": "i-1"}]}}),
    }


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(platform())


async def object_to(api: Api, sub: str | None = "alice", **body: Any) -> tuple[dict[str, str], Any]:
    status, headers, job = await api.request("POST", "/v1/objections", sub=sub, json=body)
    assert status == 202, job
    assert headers["Location"] == f"/v1/jobs/{job['id']}"
    return headers, job


async def receipt_of(api: Api, job_id: str, tmp_path: Path) -> dict[str, Any]:
    """The job's receipt, checked with the published keys as ``handover verify`` checks it."""
    status, _, receipt = await api.request("GET", f"/v1/jobs/{job_id}/receipt")
    assert status == 200, receipt
    verified = await api.verified(receipt, tmp_path / f"receipt-{job_id}.json")
    assert verified.ok, verified.problems
    return receipt  # type: ignore[no-any-return]


async def test_an_objection_to_direct_marketing_runs_at_once_and_signs_a_receipt(
    api: Api, tmp_path: Path
) -> None:
    _, job = await object_to(api, purposes=["direct_marketing"], reason="no more adverts")
    assert job["kind"] == "objection" and job["status"] == "queued"
    assert job["options"]["purposes"] == ["direct_marketing"]

    done = await api.wait(job["id"])

    assert done["status"] == "succeeded", done
    crm = api.resources.connectors["crm"]
    assert isinstance(crm, MemoryConnector) and crm.objected == {("alice", "direct_marketing")}
    report = done["connectors"]["crm"]["report"]
    assert report["purposes"] == [
        {
            "purpose": "direct_marketing",
            "supported": True,
            "targets": ["direct_marketing"],
            "stopped": 1,
            "verified": True,
            "note": None,
        }
    ]
    receipt = await receipt_of(api, job["id"], tmp_path)
    assert receipt["kind"] == "objection"
    assert receipt["job"]["purposes"] == ["direct_marketing"]
    assert receipt["job"]["decision"] is None  # absolute: no decision was needed
    by_connector = {entry["connector"]: entry for entry in receipt["connectors"]}
    assert by_connector["crm"]["purposes"][0]["stopped"] == 1
    billing = by_connector["billing"]["purposes"][0]
    assert (billing["supported"], billing["verified"]) == (False, None)
    assert billing["note"] == "billing cannot stop direct_marketing"
    assert done["connectors"]["crm"]["report"]["verification"]["passed"] is True
    unverified = done["connectors"]["billing"]["report"]["verification"]
    assert unverified["passed"] is None, unverified  # nothing acted on: nothing passed
    assert unverified["method"] == (
        "not read back: no purpose objected to was acted on at this processor"
    )
    assert b"no more adverts" not in orjson.dumps(receipt)
    status, _, found = await api.request("GET", "/v1/jobs?kind=objection&subject=alice")
    assert status == 200 and [j["id"] for j in found["jobs"]] == [job["id"]]


async def test_other_purposes_wait_for_support_and_an_upheld_objection_runs(
    api: Api, tmp_path: Path
) -> None:
    headers, marketing = await object_to(api, purposes=["analytics", "direct_marketing"])
    assert marketing["options"]["purposes"] == ["direct_marketing"]
    waiting_id = marketing["options"]["related"]
    assert headers["Link"] == f'</v1/jobs/{waiting_id}>; rel="related"'
    waiting = await api.job(waiting_id)
    assert waiting["status"] == "awaiting_confirmation"
    assert (waiting["options"]["purposes"], waiting["options"]["related"]) == (
        ["analytics"],
        marketing["id"],
    )
    assert (await api.wait(marketing["id"]))["status"] == "succeeded"

    url = f"/v1/jobs/{waiting_id}"
    status, _, body = await api.request("POST", f"{url}/confirm")
    assert status == 409 and "support decides it" in body["detail"], body
    status, _, body = await api.request("POST", f"{url}/decide", json={"upheld": True})
    assert status == 403, body
    crm = api.resources.connectors["crm"]
    assert isinstance(crm, MemoryConnector) and ("alice", "analytics") not in crm.objected

    status, _, decided = await api.request(
        "POST", f"{url}/decide", sub="s1", roles=("support",), json={"upheld": True}
    )
    assert status == 200 and decided["status"] in {"queued", "running", "succeeded"}, decided
    assert (await api.wait(waiting_id))["status"] == "succeeded"
    assert ("alice", "analytics") in crm.objected
    receipt = await receipt_of(api, waiting_id, tmp_path)
    assert receipt["job"]["decision"]["upheld"] is True
    assert receipt["job"]["decision"]["grounds"] is None
    status, _, again = await api.request(
        "POST", f"{url}/decide", sub="s1", roles=("support",), json={"upheld": True}
    )
    assert status == 409, again


async def test_a_rejected_objection_is_refused_with_its_grounds_and_the_subject_told(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory(platform(), **smtp(port))
        status, _, job = await api.request(
            "POST",
            "/v1/objections",
            sub=None,
            headers=subject_headers(api),
            json={"purposes": ["analytics"]},
        )
        assert status == 202 and job["status"] == "awaiting_confirmation", job
        url = f"/v1/jobs/{job['id']}/decide"
        staff = ("support",)
        status, _, problem = await api.request(
            "POST", url, sub="s1", roles=staff, json={"upheld": False}
        )
        assert status == 422 and problem["errors"][0]["field"] == "grounds", problem
        grounds = "fraud detection on the account needs these analytics"
        status, _, refused = await api.request(
            "POST", url, sub="s1", roles=staff, json={"upheld": False, "grounds": grounds}
        )
        assert status == 200, refused
        assert refused["status"] == "refused"
        assert refused["refusal"]["grounds"] == "compelling_legitimate_grounds"
        assert refused["refusal"]["reason"] == grounds
        assert refused["options"]["decision"]["upheld"] is False
        await eventually(arrived(inbox, 2), timeout=15, what="two messages")
    crm = api.resources.connectors["crm"]
    assert isinstance(crm, MemoryConnector) and crm.objected == set()
    told = inbox.about("refused")[0]
    assert told.recipients == [ALICE_EMAIL]
    words = told.words()
    assert "compelling legitimate grounds" in words and grounds in words
    assert "supervisory authority" in words


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"purposes": ["profiling"]}, "purposes", "unknown purpose(s) profiling"),
        ({"purposes": []}, "purposes", "at least 1 item"),
        ({"purposes": ["direct_marketing"], "connectors": ["nope"]}, "connectors", "nope"),
        ({"purposes": "direct_marketing"}, "purposes", "valid list"),
    ],
)
async def test_bad_input_is_a_problem_naming_the_field(
    api: Api, body: dict[str, Any], field: str, words: str
) -> None:
    status, headers, problem = await api.request("POST", "/v1/objections", json=body)
    assert status == 422, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["errors"][0]["field"] == field, problem
    assert words in problem["detail"] or words in problem["errors"][0]["message"], problem


async def test_direct_marketing_nothing_here_can_stop_is_refused_at_intake(
    api_factory: ApiFactory,
) -> None:
    analytics_only = MemoryConnector("crm", objection_purposes=["analytics"])
    api = await api_factory({"crm": analytics_only, "billing": MemoryConnector("billing")})
    body = {"purposes": ["direct_marketing"]}
    status, _, problem = await api.request("POST", "/v1/objections", json=body)
    assert status == 422 and problem["errors"][0]["field"] == "purposes", problem
    assert "no processor here can act on it; known: analytics" in problem["detail"], problem
    status, _, found = await api.request("GET", "/v1/jobs?kind=objection&subject=alice")
    assert status == 200 and found["jobs"] == []


async def test_a_processor_still_processing_after_the_objection_fails_the_run(
    api_factory: ApiFactory,
) -> None:
    forgetful = Forgetful("crm", objection_purposes=["direct_marketing"])
    api = await api_factory({"crm": forgetful})
    _, job = await object_to(api, purposes=["direct_marketing"])
    done = await api.wait(job["id"])
    assert done["status"] == "failed"
    assert done["connectors"]["crm"]["error"] == (
        "verification failed: still processed for direct_marketing"
    )
    status, _, _ = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
    assert status == 409


async def test_on_the_demo_platform_a_fresh_export_shows_the_marketing_consent_withdrawn(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    database = tmp_path / "demo.sqlite3"
    seed_demo_database(database)
    demo = build_connectors(list(demo_connector_configs(database)))
    async with contextlib.AsyncExitStack() as opened:
        for connector in demo.values():
            await connector.open()
            opened.push_async_callback(connector.close)
        await check_the_demo(await api_factory(demo), tmp_path)


async def check_the_demo(api: Api, tmp_path: Path) -> None:
    _, job = await object_to(api, purposes=["direct_marketing"])
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", (done["error"], done["connectors"])
    assert done["connectors"]["profile"]["report"]["purposes"][0]["stopped"] == 1
    receipt = await receipt_of(api, job["id"], tmp_path)
    assert {entry["connector"] for entry in receipt["connectors"]} == {
        "profile",
        "devices",
        "billing",
        "newsletter",
    }

    export = await api.export()
    assert (await api.wait(export["id"]))["status"] == "succeeded"
    archive, _ = await download_archive(api, export["id"])
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        consents = orjson.loads(opened.read("profile/consents.json"))
    granted = {row["purpose"]: row["granted"] for row in consents}
    assert granted["marketing_email"] == 0


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """The platform's webhook endpoint, on a port of its own."""
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield state, str(server.make_url("/hooks"))
    await server.close()


async def test_the_platform_hears_of_an_objection_awaiting_support(
    api_factory: ApiFactory, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    api = await api_factory(platform(), webhook_urls=(url,), webhook_secret=Secret(SECRET))
    _, job = await object_to(api, purposes=["analytics"])
    heard = await eventually(
        lambda: sorted(e["type"] for e in state.received),
        until=lambda seen: len(seen) == 2,
        timeout=20,
        what="two webhooks",
    )
    assert heard == ["job.awaiting_decision", "job.created"]
    assert {(e["job"]["id"], e["job"]["kind"]) for e in state.received} == {
        (job["id"], "objection")
    }


@pytest.mark.parametrize(
    ("connectors", "says"),
    [
        (("crm",), "no longer processed for the purposes you objected to"),
        (("crm", "billing"), "offer no way to stop processing for every purpose you named"),
    ],
)
async def test_the_subject_is_told_processing_stopped_only_where_every_processor_stopped_it(
    api_factory: ApiFactory, connectors: tuple[str, ...], says: str
) -> None:
    with mail_server() as (inbox, port):
        everything = platform()
        api = await api_factory({name: everything[name] for name in connectors}, **smtp(port))
        status, _, job = await api.request(
            "POST",
            "/v1/objections",
            sub=None,
            headers=subject_headers(api),
            json={"purposes": ["direct_marketing"]},
        )
        assert status == 202, job
        assert (await api.wait(job["id"]))["status"] == "succeeded"
        await eventually(arrived(inbox, 2), timeout=15, what="the acknowledgement and the end")
    assert says in inbox.about("completed")[0].words()
