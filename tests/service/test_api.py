"""The export API end to end: HTTP in, arq workers, moto S3 over HTTP, archive out."""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from aiohttp import ClientSession

from connectors.testing import MemoryConnector, SyntheticConnector
from jobs.archive.signing import jwk_public_key
from jobs.archive.verify import verify_archive
from jobs.kinds import build_pipelines
from jobs.worker import expire_archives
from tests.service.conftest import Api, ApiFactory

ALICE = {
    "contacts": [
        {"id": 1, "email": "alice@example.com", "name": "Alice", "tags": ["vip"], "score": 4.5},
        {"id": 2, "email": "alice@work.example", "name": "Alice W.", "tags": [], "score": None},
    ],
    "deals": [{"id": "d-1", "amount": 1200, "stage": "won"}],
}
BOB = {"contacts": [{"id": 3, "email": "bob@example.com", "name": "Bob", "tags": [], "score": 1.0}]}


def crm() -> MemoryConnector:
    return MemoryConnector(
        "crm",
        records={"alice": ALICE, "bob": BOB},
        files={"alice": {"avatar.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40}},
    )


def telemetry(records: int = 3000) -> SyntheticConnector:
    return SyntheticConnector("telemetry", records=records, seed=7)


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory({"crm": crm(), "telemetry": telemetry()})


async def download_archive(
    api: Api,
    job_id: str,
    sub: str = "alice",
    roles: tuple[str, ...] = (),
    filename_suffix: str = ".zip",
) -> tuple[bytes, str]:
    status, headers, body = await api.request(
        "GET", f"/v1/jobs/{job_id}/download", sub=sub, roles=roles
    )
    assert status == 303, body
    url = headers["Location"]
    async with ClientSession() as plain, plain.get(url) as response:
        assert response.status == 200
        assert (
            response.headers["Content-Disposition"]
            == f'attachment; filename="handover-export-{job_id}{filename_suffix}"'
        )
        return await response.read(), url


async def published_keys(api: Api) -> list[Any]:
    status, _, body = await api.request("GET", "/v1/keys", sub=None)
    assert status == 200
    return [jwk_public_key(jwk) for jwk in body["keys"]]


async def test_export_end_to_end_holds_every_record_and_verifies(api: Api, tmp_path: Any) -> None:
    job = await api.export(formats=["json", "csv", "ndjson"])
    assert job["status"] == "queued"
    assert set(job["connectors"]) == {"crm", "telemetry"}
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["connectors"]["telemetry"]["records"] == 3000
    assert done["connectors"]["crm"]["records"] == 4  # 2 contacts, 1 deal, 1 file
    assert done["links"]["download"] == f"/v1/jobs/{job['id']}/download"

    data, _ = await download_archive(api, job["id"])
    assert len(data) == done["result"]["size"]
    path = tmp_path / "export.zip"
    path.write_bytes(data)
    result = verify_archive(path, await published_keys(api))
    assert result.ok, result.problems
    assert result.key_id == done["result"]["key_id"]

    archive = zipfile.ZipFile(path)
    assert orjson.loads(archive.read("crm/contacts.json")) == ALICE["contacts"]
    assert orjson.loads(archive.read("crm/deals.json")) == ALICE["deals"]
    assert [
        orjson.loads(line) for line in archive.read("crm/contacts.ndjson").splitlines()
    ] == ALICE["contacts"]
    rows = list(csv.DictReader(io.StringIO(archive.read("crm/contacts.csv").decode())))
    assert [row["email"] for row in rows] == ["alice@example.com", "alice@work.example"]
    assert rows[0]["tags"] == '["vip"]' and rows[1]["score"] == ""
    assert archive.read("crm/files/avatar.png") == crm().files["alice"]["avatar.png"]
    expected = telemetry().generate(type("S", (), {"id": "alice"})())
    assert orjson.loads(archive.read("telemetry/telemetry.json")) == expected
    assert b"bob@example.com" not in b"".join(archive.read(n) for n in archive.namelist())

    manifest = orjson.loads(archive.read("manifest.json"))
    assert manifest["subject"] == {"id": "alice"}
    assert manifest["job"]["id"] == job["id"]
    listed = {f["path"]: f for f in manifest["files"]}
    assert listed["telemetry/telemetry.csv"]["records"] == 3000
    assert listed["crm/contacts.json"]["category"] == "usage"
    assert "index.html" in listed
    assert "Your data export" in archive.read("index.html").decode()


async def test_download_link_is_short_lived_and_events_record_it(api: Api) -> None:
    job = await api.export()
    await api.wait(job["id"], "succeeded")
    _, url = await download_archive(api, job["id"])
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert query["response-content-disposition"][0].startswith("attachment")
    status, _, body = await api.request("GET", f"/v1/jobs/{job['id']}/events")
    assert status == 200
    types = [event["type"] for event in body["events"]]
    assert types[0] == "created" and types[-1] == "downloaded"
    assert types.count("connector.succeeded") == 2 and "succeeded" in types


async def test_download_before_ready_is_409_and_after_expiry_410(api_factory: ApiFactory) -> None:
    api = await api_factory({"crm": crm()}, worker=False)
    job = await api.export()
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/download")
    assert status == 409 and problem["status_now"] == "queued"

    api = await api_factory({"crm": crm()})
    job = await api.export("bob")  # alice's export above is still queued: one at a time
    await api.wait(job["id"], "succeeded", sub="bob")
    store = api.resources.store
    stored = await store.get(job["id"])
    assert stored.result is not None
    assert await api.resources.storage.exists(stored.result.key)
    # The archive's time is up: move its expiry into the past, then let the cleanup run.

    def past(job: Any) -> None:
        job.result.expires_at -= timedelta(days=8)

    await store.modify(job["id"], past, actor="test", event="test")
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/download", sub="bob")
    assert status == 410
    assert await expire_archives({"handover_pipelines": build_pipelines(api.resources)}) == 1
    assert not await api.resources.storage.exists(stored.result.key)
    assert (await api.wait(job["id"], "expired", sub="bob"))["status"] == "expired"
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/download", sub="bob")
    assert status == 410 and problem["type"].endswith("/gone")


async def test_roles_see_and_download_what_they_may(api: Api) -> None:
    job = await api.export()
    await api.wait(job["id"], "succeeded")
    status, _, _ = await api.request("GET", f"/v1/jobs/{job['id']}", sub="bob")
    assert status == 404
    status, _, _ = await api.request("GET", f"/v1/jobs/{job['id']}/download", sub="bob")
    assert status == 404
    status, _, body = await api.request(
        "GET", f"/v1/jobs/{job['id']}", sub="s1", roles=("support",)
    )
    assert status == 200 and body["subject"] == "alice"
    status, _, problem = await api.request(
        "GET", f"/v1/jobs/{job['id']}/download", sub="s1", roles=("support",)
    )
    assert status == 403 and "never" in problem["detail"]
    data, _ = await download_archive(api, job["id"], sub="root", roles=("admin",))
    assert data[:2] == b"PK"


async def test_subjects_ask_only_for_themselves_and_staff_must_name_one(api: Api) -> None:
    status, _, problem = await api.request(
        "POST", "/v1/exports", sub="bob", json={"subject": "alice"}
    )
    assert status == 403
    status, _, problem = await api.request(
        "POST", "/v1/exports", sub="s1", roles=("support",), json={}
    )
    assert status == 422 and "subject" in problem["detail"]
    status, _, job = await api.request(
        "POST", "/v1/exports", sub="s1", roles=("support",), json={"subject": "bob"}
    )
    assert status == 202 and job["subject"] == "bob" and job["requested_by"] == "s1"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"colour": "blue"}', 422, "colour"),
        (b'{"formats": ["xml"]}', 422, "formats"),
        (b'{"formats": []}', 422, "formats"),
        (b'{"connectors": ["nope"]}', 422, "unknown connector(s) nope"),
        (b'{"categories": ["genetic"]}', 422, "no connector holds data in genetic"),
        (b'{"subject": 42}', 422, "subject"),
    ],
)
async def test_bad_bodies_are_problems(api: Api, body: bytes, status: int, needle: str) -> None:
    got, headers, problem = await api.request(
        "POST", "/v1/exports", data=body, headers={"Content-Type": "application/json"}
    )
    assert got == status, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["status"] == status and needle in problem["detail"]
    assert set(problem) >= {"type", "title", "status", "detail", "instance"}


async def test_bad_requests_never_500(api: Api) -> None:
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        (
            "POST",
            "/v1/exports",
            {"data": b"x" * 70_000, "headers": {"Content-Type": "application/json"}},
            413,
        ),
        ("POST", "/v1/exports", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
        ("GET", "/v1/nothing-here", {}, 404),
        ("DELETE", "/v1/exports", {}, 405),
        ("GET", "/v1/jobs/01ARYZ6S41TSV4RRFFQ69G5FAV", {}, 404),
        ("GET", "/v1/objects/handover/x.zip?expires=1&filename=x&signature=y", {}, 404),
    ]
    for method, path, kwargs, status in cases:
        got, headers, problem = await api.request(method, path, **kwargs)
        assert got == status, (method, path, problem)
        assert headers["Content-Type"].startswith("application/problem+json"), path


async def test_every_answer_forbids_content_sniffing(api: Api) -> None:
    job = await api.export()
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", f"/v1/jobs/{job['id']}", {}, 200),
        ("GET", "/v1/keys", {}, 200),
        ("GET", "/healthz", {}, 200),
        ("GET", "/openapi.json", {}, 200),
        ("GET", "/v1/jobs/01ARYZ6S41TSV4RRFFQ69G5FAV", {}, 404),
        ("GET", "/v1/nothing-here", {}, 404),
        ("DELETE", "/v1/exports", {}, 405),
        (
            "POST",
            "/v1/exports",
            {"data": b"{", "headers": {"Content-Type": "application/json"}},
            400,
        ),
        ("GET", "/v1/connectors", {"headers": {"Authorization": "Bearer x"}}, 401),
    ]
    for method, path, kwargs, status in cases:
        sub = None if "Authorization" in kwargs.get("headers", {}) else "alice"
        got, headers, _ = await api.request(method, path, sub=sub, **kwargs)
        assert got == status, (method, path)
        assert headers.get("X-Content-Type-Options") == "nosniff", (method, path, headers)
    async with api.session.get(
        f"{api.base}/v1/jobs/{job['id']}/events",
        headers={"Accept": "text/event-stream", **api.auth("alice")},
    ) as stream:
        assert stream.headers.get("X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic YWxpY2U6eA==", "Bearer", "Bearer not-a-jwt"],
)
async def test_missing_or_bad_tokens_are_401(api: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    status, response_headers, problem = await api.request(
        "GET", "/v1/connectors", sub=None, headers=headers
    )
    assert status == 401 and response_headers["WWW-Authenticate"].startswith("Bearer")
    assert problem["status"] == 401


async def test_expired_and_foreign_tokens_are_401(api: Api) -> None:
    from service.auth import TokenAuthority

    expired = api.authority.issue("alice", ["subject"], ttl_seconds=-120)
    foreign = TokenAuthority("another-secret-" + "y" * 40).issue("alice", ["subject"])
    for token, needle in ((expired, "expired"), (foreign, "not valid")):
        status, _, problem = await api.request(
            "GET", "/v1/connectors", sub=None, headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 401 and needle in problem["detail"]


async def test_failing_connector_fails_the_job_naming_it_and_keeps_the_rest(
    api_factory: ApiFactory,
) -> None:
    broken = MemoryConnector("analytics", fail="analytics API answered 403: key revoked")
    api = await api_factory({"crm": crm(), "analytics": broken})
    job = await api.export()
    done = await api.wait(job["id"])
    assert done["status"] == "failed"
    assert done["connectors"]["analytics"]["status"] == "failed"
    assert done["connectors"]["analytics"]["error"] == "analytics API answered 403: key revoked"
    assert done["connectors"]["analytics"]["error_class"] == "permanent"
    assert done["connectors"]["crm"]["status"] == "succeeded"
    assert "analytics" in done["error"] and "key revoked" in done["error"]
    stored = await api.resources.store.get(job["id"])
    staged_key = stored.connectors["crm"].staged_key
    assert staged_key and await api.resources.storage.exists(staged_key)
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/download")
    assert status == 409 and problem["status_now"] == "failed"


async def test_idempotency_key_returns_the_same_job(api: Api) -> None:
    headers = {"Idempotency-Key": "k-123"}
    first = await api.request("POST", "/v1/exports", json={"formats": ["csv"]}, headers=headers)
    again = await api.request("POST", "/v1/exports", json={"formats": ["csv"]}, headers=headers)
    assert first[0] == again[0] == 202
    assert first[2]["id"] == again[2]["id"]
    other = await api.request("POST", "/v1/exports", json={"formats": ["json"]}, headers=headers)
    assert other[0] == 422 and "Idempotency-Key" in other[2]["detail"]


async def test_connectors_and_keys_are_listed(api: Api) -> None:
    status, _, body = await api.request("GET", "/v1/connectors")
    assert status == 200
    assert [c["name"] for c in body["connectors"]] == ["crm", "telemetry"]
    assert body["connectors"][1]["datasets"][0]["category"] == "telemetry"
    job = await api.export()
    done = await api.wait(job["id"], "succeeded")
    _, _, body = await api.request("GET", "/v1/keys", sub=None)
    assert [key["kid"] for key in body["keys"]] == [done["result"]["key_id"]]


async def test_openapi_document_describes_every_route(api: Api) -> None:
    status, _, spec = await api.request("GET", "/openapi.json", sub=None)
    assert status == 200 and spec["openapi"] == "3.1.0"
    from openapi_spec_validator import validate

    validate(spec)
    assert set(spec["paths"]) >= {
        "/v1/exports",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/download",
        "/v1/keys",
    }
    status, headers, page = await api.request("GET", "/docs", sub=None)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/openapi.json" in page and b"https://" not in page


async def test_job_responses_match_the_documented_schema(api: Api) -> None:
    import jsonschema

    _, _, spec = await api.request("GET", "/openapi.json", sub=None)
    job = await api.export()
    done = await api.wait(job["id"], "succeeded")
    schema = {"$ref": "#/components/schemas/JobOut", "components": spec["components"]}
    jsonschema.validate(job, schema)
    jsonschema.validate(done, schema)
    # The reference resolves to a schema that constrains: a job off it is refused.
    for field, wrong in (("status", "almost-done"), ("id", 7), ("created_at", None)):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**done, field: wrong}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in done.items() if k != "status"}, schema)


async def test_a_local_download_link_works_once(api_factory: ApiFactory) -> None:
    """HANDOVER_MAX_DOWNLOADS counts links minted; single-use links make it count fetches."""
    api = await api_factory({"crm": crm()}, s3_bucket=None, max_downloads=2)
    job = await api.export()
    await api.wait(job["id"], "succeeded")

    async def link() -> str:
        status, headers, body = await api.request("GET", f"/v1/jobs/{job['id']}/download")
        assert status == 303, body
        parts = urlsplit(headers["Location"])  # the store's links name HANDOVER_PUBLIC_URL
        return f"{api.base}{parts.path}?{parts.query}"

    async with ClientSession() as plain:
        url = await link()
        async with plain.get(url) as response:
            assert response.status == 200
            first = await response.read()
        async with plain.get(url) as response:
            assert response.status == 410
            problem = await response.json(content_type=None)
        assert problem["type"].endswith("link-used") and "works once" in problem["detail"]
        async with plain.get(await link()) as response:  # a new link: the second download
            assert response.status == 200 and await response.read() == first
    status, _, problem = await api.request("GET", f"/v1/jobs/{job['id']}/download")
    assert status == 403 and problem["type"].endswith("download-limit-reached")
