"""Support staff over HTTP: search, stats, live timeline, retry, extend."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import ClientTimeout

from connectors.testing import MemoryConnector
from tests.polling import eventually
from tests.service.conftest import Api, ApiFactory

SUPPORT = ("support",)


def connectors() -> dict[str, MemoryConnector]:
    return {
        "crm": MemoryConnector(
            "crm", records={s: {"contacts": [{"id": s}]} for s in ("alice", "bob", "carol")}
        ),
        "billing": MemoryConnector("billing", records={"alice": {"invoices": [{"n": 1}]}}),
    }


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(connectors())


async def staff(api: Api, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, body = await api.request(method, path, sub="s1", roles=SUPPORT, **kwargs)
    return status, body


async def test_search_filters_and_pages(api: Api) -> None:
    created = []
    for subject in ("alice", "bob", "carol", "alice", "bob"):
        created.append(await api.export(sub=subject))
        await api.wait(created[-1]["id"], sub=subject)  # one live export per subject
    status, page = await staff(api, "GET", "/v1/jobs?subject=alice")
    assert status == 200
    assert [j["id"] for j in page["jobs"]] == [created[3]["id"], created[0]["id"]]
    seen: list[str] = []
    cursor = ""
    while True:
        status, page = await staff(api, "GET", f"/v1/jobs?limit=2&status=succeeded{cursor}")
        assert status == 200
        seen.extend(j["id"] for j in page["jobs"])
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [j["id"] for j in reversed(created)]
    status, page = await staff(api, "GET", "/v1/jobs?connector=billing&kind=export")
    assert status == 200 and len(page["jobs"]) == 5
    status, page = await staff(api, "GET", "/v1/jobs?overdue=true")
    assert status == 200 and page["jobs"] == []


async def test_subjects_see_only_their_own_jobs(api: Api) -> None:
    mine = await api.export(sub="alice")
    await api.export(sub="bob")
    status, _, page = await api.request("GET", "/v1/jobs", sub="alice")
    assert status == 200 and [j["id"] for j in page["jobs"]] == [mine["id"]]
    status, _, _ = await api.request("GET", "/v1/jobs?subject=bob", sub="alice")
    assert status == 403


@pytest.mark.parametrize(
    "query",
    [
        "status=lost",
        "limit=0",
        "limit=1000",
        "sort=name",
        "colour=red",
        "cursor=zzz",
        "due_before=yesterday",
    ],
)
async def test_bad_search_parameters_are_422(api: Api, query: str) -> None:
    status, body = await staff(api, "GET", f"/v1/jobs?{query}")
    assert status == 422, body
    assert body["type"].endswith("invalid-request")


async def test_stats_count_jobs_by_kind_and_status(api: Api) -> None:
    job = await api.export()
    await api.wait(job["id"])
    status, body = await staff(api, "GET", "/v1/stats")
    assert status == 200
    assert body["counts"]["export"] == {"succeeded": 1}
    assert body["overdue"] == 0
    status, _, _ = await api.request("GET", "/v1/stats", sub="alice")
    assert status == 403


async def test_retry_reruns_only_failed_connectors(api_factory: ApiFactory) -> None:
    flaky = MemoryConnector(
        "billing",
        records={"alice": {"invoices": [{"n": 1}]}},
        fail="billing API down for maintenance",
    )
    api = await api_factory({"crm": connectors()["crm"], "billing": flaky})
    job = await api.export()
    failed = await api.wait(job["id"])
    assert failed["status"] == "failed"
    crm_finished = failed["connectors"]["crm"]["finished_at"]
    status, _, _ = await api.request("POST", f"/v1/jobs/{job['id']}/retry", sub="alice")
    assert status == 403
    flaky.fail = None
    status, retried = await staff(api, "POST", f"/v1/jobs/{job['id']}/retry")
    assert status == 200, retried
    assert retried["generation"] == 2 and retried["status"] == "queued"
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["connectors"]["crm"]["finished_at"] == crm_finished  # not run again
    assert done["connectors"]["crm"]["attempts"] == 1
    assert done["connectors"]["billing"]["attempts"] == 2
    _, _, events = await api.request("GET", f"/v1/jobs/{job['id']}/events")
    retried_event = next(e for e in events["events"] if e["type"] == "retried")
    assert retried_event["actor"] == "s1"
    status, problem = await staff(api, "POST", f"/v1/jobs/{job['id']}/retry")
    assert status == 409, problem


async def test_extend_adds_at_most_two_months_with_a_reason(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(), worker=False)
    job = await api.export()
    status, body = await staff(api, "POST", f"/v1/jobs/{job['id']}/extend", json={"months": 1})
    assert status == 422 and "reason" in body["detail"]
    status, extended = await staff(
        api,
        "POST",
        f"/v1/jobs/{job['id']}/extend",
        json={"months": 1, "reason": "many processors involved"},
    )
    assert status == 200
    assert extended["due_at"] > job["due_at"]
    assert extended["extended_months"] == 1
    status, body = await staff(
        api,
        "POST",
        f"/v1/jobs/{job['id']}/extend",
        json={"months": 2, "reason": "still waiting on the CRM"},
    )
    assert status == 422 and "2 months in all" in body["detail"]
    status, _, events = await api.request("GET", f"/v1/jobs/{job['id']}/events")
    extended_event = next(e for e in events["events"] if e["type"] == "extended")
    assert (
        extended_event["actor"] == "s1" and extended_event["reason"] == "many processors involved"
    )
    await api.request("POST", f"/v1/jobs/{job['id']}/cancel")
    status, body = await staff(
        api, "POST", f"/v1/jobs/{job['id']}/extend", json={"months": 1, "reason": "too late"}
    )
    assert status == 409


async def test_live_timeline_streams_until_the_job_ends(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors())
    job = await api.export()
    headers = {"Accept": "text/event-stream", **api.auth("alice")}
    events: list[dict[str, Any]] = []
    ids: list[str] = []
    async with api.session.get(
        f"{api.base}/v1/jobs/{job['id']}/events", headers=headers
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(30):
            async for line in response.content:
                text = line.decode().rstrip("\n")
                if text.startswith("id: "):
                    ids.append(text[4:])
                if text.startswith("data: "):
                    events.append(orjson.loads(text[6:]))
    types = [e["type"] for e in events]
    assert types[0] == "created" and types[-1] == "succeeded"
    assert types.count("connector.succeeded") == 2
    assert ids == [e["id"] for e in events]
    # Resuming after the second event replays only what came after it.
    resume = {**headers, "Last-Event-ID": ids[1]}
    async with api.session.get(
        f"{api.base}/v1/jobs/{job['id']}/events", headers=resume
    ) as response:
        body = await response.text()
    assert [line[4:] for line in body.splitlines() if line.startswith("id: ")] == ids[2:]


@pytest.mark.parametrize(
    "last_event_id",
    [
        "bogus",
        "1",
        "1-1-1",
        "-1-0",
        "99999999999999999999-0",
        "18446744073709551616-0",
        "18446744073709551615-18446744073709551615",
    ],
)
async def test_a_last_event_id_that_is_no_event_id_is_a_400_before_the_stream(
    api: Api, last_event_id: str
) -> None:
    job = await api.export()
    headers = {"Accept": "text/event-stream", "Last-Event-ID": last_event_id}
    # Before the fix the stream answered 200, then hung on the error written into it.
    status, answer, problem = await api.request(
        "GET", f"/v1/jobs/{job['id']}/events", headers=headers, timeout=ClientTimeout(10)
    )
    assert status == 400, problem
    assert answer["Content-Type"].startswith("application/problem+json")
    assert problem["status"] == 400 and "Last-Event-ID" in problem["detail"]


async def test_idempotency_key_replays_any_post(api_factory: ApiFactory) -> None:
    flaky = MemoryConnector("billing", fail="billing API down")
    api = await api_factory({"billing": flaky})
    job = await api.export()
    await api.wait(job["id"])
    flaky.fail = None
    headers = {"Idempotency-Key": "retry-1"}
    path = f"/v1/jobs/{job['id']}/retry"
    first = await api.request("POST", path, sub="s1", roles=SUPPORT, headers=headers)
    again = await api.request("POST", path, sub="s1", roles=SUPPORT, headers=headers)
    assert first[0] == again[0] == 200
    assert again[1]["Idempotent-Replayed"] == "true"
    assert again[2] == first[2]
    other = await api.request(
        "POST", f"/v1/jobs/{job['id']}/cancel", sub="s1", roles=SUPPORT, headers=headers
    )
    assert other[0] == 422
    # Keys are per caller: the same key from someone else is a new request.
    mine = await api.request("POST", "/v1/exports", sub="bob", json={}, headers=headers)
    assert mine[0] == 202
    assert "Idempotent-Replayed" not in mine[1]


async def test_one_live_export_per_subject(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(), worker=False)
    first = await api.export()
    status, headers, problem = await api.request("POST", "/v1/exports", json={"formats": ["csv"]})
    assert status == 409
    assert headers["Location"] == f"/v1/jobs/{first['id']}"
    assert problem["job_id"] == first["id"]
    await api.request("POST", f"/v1/jobs/{first['id']}/cancel")
    assert (await api.request("POST", "/v1/exports", json={}))[0] == 202


async def test_rate_limits_answer_429_with_retry_after(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(), worker=False, rate_limit=5, subject_rate_limit=2)
    token = {"Authorization": f"Bearer {api.token('s1', 'support')}"}
    # Far from a minute's and an hour's end, so that every request counts in one window.
    await eventually(
        lambda: time.time() % 60 < 50 and time.time() % 3600 < 3590,
        timeout=15,
        what="a fresh minute",
    )
    answers = [
        (await api.request("GET", "/v1/stats", sub=None, headers=token))[0] for _ in range(7)
    ]
    assert answers == [200] * 5 + [429] * 2
    status, headers, problem = await api.request("GET", "/v1/stats", sub=None, headers=token)
    assert status == 429 and 0 < int(headers["Retry-After"]) <= 60
    assert problem["type"].endswith("/rate-limited")
    # Per subject: a third new request about alice in the hour is refused, whoever asks.
    await api.export("alice")
    status, _, _ = await api.request("POST", "/v1/erasures", json={"dry_run": True})
    assert status == 202
    status, headers, problem = await api.request("POST", "/v1/restrictions", json={})
    assert status == 429 and "subject" in problem["detail"]


async def test_downloads_are_capped_when_configured(api_factory: ApiFactory) -> None:
    api = await api_factory(connectors(), max_downloads=2)
    job = await api.export()
    await api.wait(job["id"], "succeeded")
    path = f"/v1/jobs/{job['id']}/download"
    assert [(await api.request("GET", path))[0] for _ in range(3)] == [303, 303, 403]
    _, _, events = await api.request("GET", f"/v1/jobs/{job['id']}/events")
    assert [e["type"] for e in events["events"]].count("downloaded") == 2
