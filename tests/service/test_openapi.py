"""``/openapi.json`` is valid OpenAPI 3.1, and every operation it documents answers as documented.

For each operation the test sends the request its documentation makes: path and
query parameters from their examples, the body from the example of each property
of the request schema, a token of a role the operation serves. An operation without
path parameters must succeed with its example; one with them (an example job id,
which names no job here) must answer a status it documents, and then succeed with
the id of a real job made for it. Every answer — examples, real ids, and the
requests that made those jobs — must have a documented status, and a body of the
documented media type that validates against the documented schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from connectors.base import Connector
from connectors.byhand import ManualConnector
from connectors.errors import PermanentError
from connectors.items import Item, Subject
from connectors.testing import MemoryConnector
from jobs.handoff import Handoffs
from jobs.journal import Interrupted
from jobs.model import iso, utcnow
from service.api.operations import OPERATIONS
from tests.polling import eventually
from tests.service.conftest import Api, ApiFactory

JSON_MEDIA = {"application/json", "application/problem+json"}
SUCCESS = range(200, 400)
ENDED = {"succeeded", "failed", "canceled", "expired"}


class RefusesOne(MemoryConnector):
    """A processor whose export fails for one subject: a job that fails, to retry."""

    def __init__(self, name: str, *, refused: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.refused = refused

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        if subject.id == self.refused:
            raise PermanentError(f"{self.name} refuses to answer about {subject.id}")
        async for item in super().export(subject):
            yield item


class Profile(MemoryConnector):
    """The platform's accounts, and the identity source of its users' emails."""

    provides = frozenset({"email"})

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        profiles = self.records.get(subject.id, {}).get("profile", [])
        return {"email": profiles[0]["email"]} if profiles else {}


def platform() -> dict[str, Connector]:
    """Connectors named and categorised like the demo platform the examples are written for.

    ``newsletter`` is keyed by email, which ``profile`` knows for alice and bob only.
    ``paper-files`` is worked by hand: a job that asks it waits for staff, so only the
    job made for the reply operations asks it.
    """
    newsletter = MemoryConnector(
        "newsletter",
        records={"alice": {"subscriptions": [{"list": "product news"}]}},
        datasets=[{"name": "subscriptions", "category": "contact"}],
    )
    newsletter.identifiers = frozenset({"email"})
    return {
        "newsletter": newsletter,
        "profile": Profile(
            "profile",
            records={
                "alice": {"profile": [{"id": "alice", "email": "alice@example.com"}]},
                "bob": {"profile": [{"id": "bob", "email": "bob@example.com"}]},
            },
            datasets=[{"name": "profile", "category": "identification"}],
            objection_purposes=["direct_marketing", "analytics"],
            rectifiable={"profile.name": "text"},
        ),
        "devices": MemoryConnector(
            "devices",
            records={
                "alice": {
                    "devices": [{"id": "alice-dev-1", "model": "Thermo S1"}],
                    "telemetry": [{"device_id": "alice-dev-1", "ts": 1, "temperature": 21.5}],
                }
            },
            datasets=[
                {"name": "devices", "category": "device"},
                {"name": "telemetry", "category": "telemetry"},
            ],
        ),
        "billing": RefusesOne(
            "billing",
            refused="dave",
            records={"alice": {"invoices": [{"id": "INV-0001", "amount_cents": 1999}]}},
            datasets=[{"name": "invoices", "category": "economic"}],
        ),
        "paper-files": ManualConnector("paper-files", identifiers=["id"], category="contact"),
    }


#: Every connector a person does not serve: jobs that must end by themselves ask these.
BY_ITSELF = {"connectors": ["newsletter", "profile", "devices", "billing"]}


@dataclass
class Documented:
    """The OpenAPI document, and the answers seen per operation."""

    spec: dict[str, Any]
    seen: dict[str, list[int]] = field(default_factory=dict)

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (method.upper(), path, operation)
            for path, item in self.spec["paths"].items()
            for method, operation in item.items()
        ]

    def operation(self, method: str, path: str) -> dict[str, Any]:
        """The documented operation a request's method and path match."""
        segments = path.split("?")[0].strip("/").split("/")
        for documented_method, template, operation in self.operations():
            pattern = template.strip("/").split("/")
            if documented_method != method:
                continue
            parts = segments
            if pattern[-1] == "{key}" and len(parts) >= len(pattern):  # a key holds slashes
                parts = [*parts[: len(pattern) - 1], "/".join(parts[len(pattern) - 1 :])]
            if len(parts) == len(pattern) and all(
                p == t or (t.startswith("{") and t.endswith("}"))
                for p, t in zip(parts, pattern, strict=True)
            ):
                return operation
        raise AssertionError(f"{method} {path} is not a documented operation")

    def validator(self, schema: Mapping[str, Any]) -> Draft202012Validator:
        """A JSON Schema 2020-12 validator that resolves ``#/components/...`` in the document."""
        return Draft202012Validator(
            {**schema, "components": self.spec["components"]}, format_checker=FormatChecker()
        )

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self.spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
        return schema

    def example(self, schema: Mapping[str, Any]) -> Any:
        """The schema's example: its own, or an object of its properties' examples."""
        schema = self.resolve(schema)
        if schema.get("examples"):
            return schema["examples"][0]
        examples = {}
        for name, property_schema in schema.get("properties", {}).items():
            value = self.example(property_schema)
            if value is not None:
                examples[name] = value
        missing = set(schema.get("required", [])) - set(examples)
        assert not missing, f"no example for required propert(ies) {sorted(missing)}"
        return examples or None

    def check(
        self, method: str, path: str, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        """The answer has a documented status, headers and a body of the documented schema."""
        operation = self.operation(method, path)
        self.seen.setdefault(operation["operationId"], []).append(status)
        where = f"{method} {path} answered {status}"
        assert str(status) in operation["responses"], (
            f"{where}, not among the documented {sorted(operation['responses'])}: {body[:300]!r}"
        )
        response = operation["responses"][str(status)]
        for header in response.get("headers", {}):
            assert header in headers, f"{where} without its documented {header} header"
        for media, content in response.get("content", {}).items():
            got = headers.get("Content-Type", "").split(";")[0]
            assert got == media, f"{where} as {got}, documented {media}"
            if media in JSON_MEDIA and "schema" in content:
                errors = [
                    f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                    for e in self.validator(content["schema"]).iter_errors(orjson.loads(body))
                ]
                assert not errors, f"{where} with a body off its schema: {errors}"


@dataclass
class Client:
    """Sends requests to the API and holds every answer to the documentation."""

    api: Api
    documented: Documented

    async def call(
        self,
        method: str,
        path: str,
        *,
        who: tuple[str, ...] | None = ("alice", "subject"),
        query: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> tuple[int, dict[str, str], Any]:
        headers = {}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.api.token(who[0], *who[1:])}"
        data = None
        if isinstance(body, str):  # a body read as a stream
            headers["Content-Type"] = "text/plain"
            data = body.encode()
        elif body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        async with self.api.session.request(
            method,
            self.api.base + path,
            params=query,
            data=data,
            headers=headers,
            allow_redirects=False,
        ) as response:
            raw = await response.read()
            answer_headers = dict(response.headers)
        self.documented.check(method, path, response.status, answer_headers, raw)
        parsed = (
            orjson.loads(raw)
            if answer_headers.get("Content-Type", "").startswith(tuple(JSON_MEDIA))
            else raw
        )
        return response.status, answer_headers, parsed

    async def create(self, path: str, who: tuple[str, ...], body: Any) -> dict[str, Any]:
        status, _, job = await self.call("POST", path, who=who, body=body)
        assert status == 202, job
        return job  # type: ignore[no-any-return]

    async def ended(self, job_id: str, who: tuple[str, ...]) -> dict[str, Any]:
        return await self.until(job_id, who, *ENDED)

    async def job(self, job_id: str, who: tuple[str, ...]) -> dict[str, Any]:
        status, _, job = await self.call("GET", f"/v1/jobs/{job_id}", who=who)
        assert status == 200, job
        return job  # type: ignore[no-any-return]

    async def until(self, job_id: str, who: tuple[str, ...], *statuses: str) -> dict[str, Any]:
        return await eventually(
            lambda: self.job(job_id, who),
            until=lambda job: job["status"] in statuses,
            timeout=30,
            what=f"job {job_id} to be {' or '.join(statuses)}",
        )


def query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parameter_example(parameter: Mapping[str, Any]) -> Any:
    if "example" in parameter:
        return parameter["example"]
    if parameter.get("examples"):
        return next(iter(parameter["examples"].values()))["value"]
    return (parameter.get("schema", {}).get("examples") or [None])[0]


@dataclass
class Request:
    """One request an operation's documentation makes."""

    path: str
    query: dict[str, str]
    body: Any

    @classmethod
    def from_examples(
        cls, documented: Documented, template: str, operation: Mapping[str, Any]
    ) -> Request:
        path, query = template, {}
        for parameter in operation.get("parameters", []):
            value = parameter_example(parameter)
            name = f"{operation['operationId']}: parameter {parameter['name']!r}"
            if parameter["in"] == "header" and not parameter.get("required"):
                continue  # optional headers (Idempotency-Key) are the caller's to choose
            assert value is not None, f"{name} has no example"
            errors = list(documented.validator(parameter["schema"]).iter_errors(value))
            assert not errors, f"{name}: its example is off its own schema: {errors[0].message}"
            if parameter["in"] == "path":
                path = path.replace(f"{{{parameter['name']}}}", str(value))
            elif parameter["in"] == "query":
                query[parameter["name"]] = query_value(value)
        body = None
        content = operation.get("requestBody", {}).get("content", {})
        if "requestBody" in operation and "application/json" not in content:
            (upload,) = content.values()  # a body read as a stream: its documented example
            return cls(path, query, upload["example"])
        if "requestBody" in operation:
            schema = content["application/json"]["schema"]
            body = documented.example(schema)
            assert body is not None, f"{operation['operationId']}: no example request body"
            errors = list(documented.validator(schema).iter_errors(body))
            assert not errors, f"{operation['operationId']}: example body off its schema: {errors}"
        return cls(path, query, body)


def caller(operation: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A token of a role the operation serves (none when it needs none)."""
    if "security" not in operation:
        return None
    if {"breaches", "disclosures"} & set(operation["tags"]):
        return ("root", "admin")  # the registers are staff's; recording in them, an admin's
    if "support" in operation["tags"]:
        return ("support-1", "support")
    if operation["operationId"] == "confirm_job":
        # A subject confirms with a token from a fresh sign-in; an admin may always.
        return ("root", "admin")
    return ("alice", "subject")


@pytest.fixture
async def client(api_factory: ApiFactory) -> Client:
    # Embedded storage: download links are the API's own (/v1/objects/...), so that
    # operation is exercised too. No grace: a confirmed erasure runs at once.
    api = await api_factory(platform(), s3_bucket=None, erasure_grace=timedelta(0))
    async with api.session.get(api.base + "/openapi.json") as response:
        assert response.status == 200
        spec = await response.json()
    return Client(api, Documented(spec))


async def test_the_document_is_valid_openapi_3_1(client: Client) -> None:
    spec = client.documented.spec
    assert spec["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(spec).validate()
    names = [operation["operationId"] for _, _, operation in client.documented.operations()]
    assert len(names) == len(set(names)) == len(OPERATIONS)
    # The validator is no rubber stamp: a response without its description is refused.
    broken = orjson.loads(orjson.dumps(spec))
    del broken["paths"]["/v1/exports"]["post"]["responses"]["202"]["description"]
    with pytest.raises(OpenAPIValidationError):
        OpenAPIV31SpecValidator(broken).validate()


async def test_every_operation_answers_its_documented_example_as_documented(
    client: Client,
) -> None:
    documented = client.documented
    alice = ("alice", "subject")

    # Real jobs for the operations on a job: each in the state its operation needs.
    exported = await client.create("/v1/exports", alice, BY_ITSELF)
    assert (await client.ended(exported["id"], alice))["status"] == "succeeded"
    dave = ("dave", "subject")
    refused = await client.create("/v1/exports", dave, BY_ITSELF)
    assert (await client.ended(refused["id"], dave))["status"] == "failed"
    dry_run = await client.create("/v1/erasures", alice, {"dry_run": True})
    assert (await client.ended(dry_run["id"], alice))["status"] == "succeeded"
    restriction = await client.create("/v1/restrictions", alice, BY_ITSELF)
    assert (await client.ended(restriction["id"], alice))["status"] == "succeeded"
    waiting = {
        name: (await client.create("/v1/erasures", (subject, "subject"), {}), (subject, "subject"))
        for name, subject in (
            ("confirm", "mona"),  # not alice: her erasure would end the export downloaded below
            ("cancel", "carol"),
            ("extend", "bob"),
            ("refuse", "ivan"),
            ("ask", "judy"),
            ("answer", "kate"),
            ("resume", "liam"),
        )
    }
    for job, _ in waiting.values():
        assert job["status"] == "awaiting_confirmation"
    # An objection other than to direct marketing waits for support's decision.
    objection = await client.create(
        "/v1/objections", ("olga", "subject"), {"purposes": ["analytics"]}
    )
    assert objection["status"] == "awaiting_confirmation", objection
    # Asked for information; liam answers, offering an identifier for support to accept.
    support = ("support-1", "support")
    for name in ("answer", "resume"):
        asked = f"/v1/jobs/{waiting[name][0]['id']}/ask"
        status, _, job = await client.call("POST", asked, who=support, body={"needs": "your ID"})
        assert status == 200 and job["status"] == "awaiting_information", job
    status, _, job = await client.call(
        "POST",
        f"/v1/jobs/{waiting['resume'][0]['id']}/information",
        who=waiting["resume"][1],
        body={"answer": "C-1", "identifiers": {"identities": {"crm_id": "C-1"}}},
    )
    assert status == 200 and job["information"]["offered"] == ["crm_id"], job
    # Nobody knows erin's or frank's email: their exports wait for support.
    unknown = {}
    for name in ("erin", "frank"):
        job = await client.create("/v1/exports", (name, "subject"), BY_ITSELF)
        unknown[name] = await client.until(job["id"], (name, "subject"), "needs_attention")
        assert unknown[name]["connectors"]["newsletter"]["status"] == "unidentified"
    # A task waiting on a person, and a reply link to it, for the reply operations.
    nina = ("nina", "subject")
    handed = await client.create("/v1/exports", nina, {"connectors": ["paper-files"]})
    await eventually(
        lambda: client.job(handed["id"], nina),
        until=lambda job: job["connectors"]["paper-files"]["status"] == "waiting_on_processor",
        timeout=30,
        what="the paper-files task to wait",
    )
    resources = client.api.resources
    stored = await resources.store.get(handed["id"])
    nonce = (stored.connectors["paper-files"].handoff or {})["nonce"]
    token = Handoffs(resources).link(stored, "paper-files", nonce, utcnow()).token(resources)
    status, headers, _ = await client.call("GET", f"/v1/jobs/{exported['id']}/download")
    assert status == 303
    link = urlsplit(headers["Location"])

    real: dict[str, tuple[str, tuple[str, ...] | None]] = {
        "confirm_job": (waiting["confirm"][0]["id"], ("root", "admin")),
        "cancel_job": (waiting["cancel"][0]["id"], waiting["cancel"][1]),
        "extend_job": (waiting["extend"][0]["id"], ("support-1", "support")),
        "refuse_job": (waiting["refuse"][0]["id"], ("support-1", "support")),
        "decide_job": (objection["id"], ("support-1", "support")),
        "lift_restriction": (restriction["id"], ("support-1", "support")),
        "ask_job": (waiting["ask"][0]["id"], ("support-1", "support")),
        "answer_job": (waiting["answer"][0]["id"], waiting["answer"][1]),
        "resume_job": (waiting["resume"][0]["id"], ("support-1", "support")),
        "retry_job": (refused["id"], ("support-1", "support")),
        "add_identifiers": (unknown["erin"]["id"], ("support-1", "support")),
        "go_without": (unknown["frank"]["id"], ("support-1", "support")),
        "get_receipt": (dry_run["id"], alice),
        "get_job": (exported["id"], alice),
        "list_events": (exported["id"], alice),
        "download": (exported["id"], alice),
        "get_reply": (token, None),
        "post_reply": (token, None),
    }
    # A breach for the register's operations (the example record made one too, but its id
    # is not known here); the notification's example falls within its 72 hours.
    admin = ("root", "admin")
    record = documented.operation("POST", "/v1/breaches")["requestBody"]["content"]
    example = documented.example(record["application/json"]["schema"])
    status, _, breach = await client.call("POST", "/v1/breaches", who=admin, body=example)
    assert status == 201, breach
    for name in (
        "get_breach",
        "update_breach",
        "notify_authority",
        "breach_report",
        "breach_report_page",
        "start_breach_notices",
        "breach_notices",
        "breach_notices_report",
        "retry_breach_notices",
    ):
        real[name] = (breach["id"], admin)
    notices = f"/v1/breaches/{breach['id']}/notices"
    # A disclosure whose archive is ready, and a one-time link to it for the authority.
    record = documented.operation("POST", "/v1/disclosures")["requestBody"]["content"]
    example = documented.example(record["application/json"]["schema"])
    status, _, disclosure = await client.call("POST", "/v1/disclosures", who=admin, body=example)
    assert status == 202, disclosure
    await client.until(disclosure["id"], admin, "succeeded")
    for name in ("get_disclosure", "extend_disclosure", "issue_link"):
        real[name] = (disclosure["id"], admin)
    issued = f"/v1/disclosures/{disclosure['id']}/link"
    status, _, authority = await client.call("POST", issued, who=admin, body={"hours": 1})
    assert status == 200, authority
    authority_link = urlsplit(authority["url"])

    for method, template, operation in documented.operations():
        name = operation["operationId"]
        request = Request.from_examples(documented, template, operation)
        who = caller(operation)
        status, _, answer = await client.call(
            method, request.path, who=who, query=request.query, body=request.body
        )
        parameters = operation.get("parameters", [])
        if not any(p["in"] == "path" for p in parameters):
            assert status in SUCCESS, f"{name}: its documented example failed: {answer}"
            if status == 202 and template == "/v1/exports":
                await client.ended(answer["id"], alice)  # one live export per subject
            optional = {
                p["name"] for p in parameters if p["in"] == "query" and not p.get("required")
            }
            if optional:  # and with none of its optional filters: every job, every state
                bare = {k: v for k, v in request.query.items() if k not in optional}
                status, _, answer = await client.call(method, request.path, who=who, query=bare)
                assert status in SUCCESS, f"{name} without its optional parameters: {answer}"
            continue
        if name == "serve_object":  # the download link the API made
            path, owner, query = link.path, None, dict(parse_qsl(link.query))
        elif name == "fetch_archive":  # the authority's link
            path, owner = authority_link.path, None
            query = dict(parse_qsl(authority_link.query))
        else:
            assert name in real, f"{name}: the test has no real job for its path parameters"
            job_id, owner = real[name]
            path = template.replace("{job_id}", job_id).replace("{breach_id}", job_id)
            path = path.replace("{disclosure_id}", job_id)
            path = path.replace("{token}", job_id)
            query = request.query
        if name == "retry_breach_notices":  # once every line has an outcome
            await eventually(
                lambda: client.call("GET", notices, who=admin),
                until=lambda answer: answer[2]["state"] == "done",
                timeout=30,
                what="the breach's notices to be done",
            )
        status, _, answer = await client.call(
            method, path, who=owner, query=query, body=request.body
        )
        assert status in SUCCESS, f"{name} on a real resource: {status} {answer}"

    every = {operation["operationId"] for _, _, operation in documented.operations()}
    assert set(documented.seen) == every
    unsuccessful = [
        n for n, statuses in documented.seen.items() if not set(statuses) & set(SUCCESS)
    ]
    assert not unsuccessful, f"never answered with success: {unsuccessful}"


def declared(documented: Documented, model: str) -> dict[str, Any]:
    """The properties the document declares for the component schema ``model``."""
    properties: dict[str, Any] = documented.spec["components"]["schemas"][model]["properties"]
    return properties


async def test_problems_declare_every_member_they_carry(client: Client) -> None:
    """Real problems (each checked against its documented schema as it is received) carry
    no member the document leaves undeclared, and the optional ones say when they appear."""
    documented = client.documented
    members = declared(documented, "ProblemOut")
    pia, support = ("pia", "subject"), ("support-1", "support")
    problems = []
    status, _, problem = await client.call(
        "POST", "/v1/exports", who=pia, body={"jurisdiction": "x"}
    )
    assert status == 422 and problem["errors"][0]["field"] == "jurisdiction", problem
    problems.append(problem)
    waiting = await client.create("/v1/exports", pia, {"connectors": ["paper-files"]})
    status, _, problem = await client.call("POST", "/v1/exports", who=pia, body={})
    assert status == 409 and problem["job_id"] == waiting["id"], problem
    problems.append(problem)
    erasure = await client.create("/v1/erasures", pia, {"jurisdiction": "lgpd"})
    extend = f"/v1/jobs/{erasure['id']}/extend"
    status, _, problem = await client.call("POST", extend, who=support, body={"reason": "many"})
    assert status == 409 and problem["rule"] == "extension-not-allowed", problem
    assert problem["type"].endswith("/extension-not-allowed")
    problems.append(problem)
    cancel = f"/v1/jobs/{erasure['id']}/cancel"
    status, _, _ = await client.call("POST", cancel, who=pia, body={})
    assert status == 200
    status, _, problem = await client.call("POST", cancel, who=pia, body={})
    assert status == 409 and problem["status_now"] == "canceled", problem
    problems.append(problem)

    for problem in problems:
        assert set(problem) <= set(members), sorted(set(problem) - set(members))
    for name in ("errors", "rule", "status_now", "job_id"):
        assert members[name]["description"], name
    assert "409" in members["rule"]["description"]
    assert "extension-too-late" in members["rule"]["description"]
    assert "422" in members["errors"]["description"]
    required = documented.spec["components"]["schemas"]["ProblemOut"]["required"]
    assert not {"errors", "rule", "status_now", "job_id"} & set(required)


async def test_statuses_readiness_and_receipts_are_described_as_the_code_has_them(
    client: Client,
) -> None:
    documented = client.documented
    status = declared(documented, "JobOut")["status"]
    for name in status["enum"]:
        assert f"`{name}`" in status["description"], name
    assert "The request lifecycle the law sets" in status["description"]

    readyz = documented.operation("GET", "/readyz")["description"]
    for check in ("redis", "worker", "epoch", "storage"):
        assert f"`{check}`" in readyz, check
    assert "`handover epoch acknowledge`" in readyz
    assert "refuses `CONFIG GET`" in readyz and "counts as ready" in readyz
    assert "noeviction" in readyz

    receipt = declared(documented, "ReceiptOut")
    assert receipt["handover_copies"]["description"]
    entry = declared(documented, "ReceiptConnectorOut")
    assert entry["interrupted_attempts"]["description"]
    # What the journal writes of an interrupted attempt, for every way it can end.
    attempt = documented.validator({"$ref": "#/components/schemas/InterruptedAttemptOut"})
    planned = {"contacts": {"deleted": 2, "anonymised": 0, "retained": 0}}
    for interrupted in (
        Interrupted(1, iso(utcnow()), "unknown", {}, None),
        Interrupted(2, iso(utcnow()), "committed", planned, "transient", recorded=True),
        Interrupted(3, iso(utcnow()), "rolled back", planned, "permanent"),
    ):
        errors = [e.message for e in attempt.iter_errors(interrupted.statement())]
        assert not errors, (interrupted, errors)

    # A real erasure's receipt: the subject's earlier export, deleted, listed as the journal has it.
    quinn, admin = ("quinn", "subject"), ("root", "admin")
    asked = {"connectors": ["devices", "billing"]}  # neither needs an email nobody knows
    export = await client.create("/v1/exports", quinn, asked)
    assert (await client.ended(export["id"], quinn))["status"] == "succeeded"
    erasure = await client.create("/v1/erasures", quinn, asked)
    status, _, _ = await client.call(
        "POST", f"/v1/jobs/{erasure['id']}/confirm", who=admin, body={}
    )
    assert status == 200
    assert (await client.ended(erasure["id"], quinn))["status"] == "succeeded"
    status, _, answer = await client.call("GET", f"/v1/jobs/{erasure['id']}/receipt", who=quinn)
    assert status == 200, answer  # and its body matched the documented ReceiptOut
    (copy,) = answer["handover_copies"]
    assert (copy["job"], copy["kind"], copy["archive_deleted"], copy["status"]) == (
        export["id"],
        "export",
        True,
        "expired",
    )
    assert isinstance(copy["staged_objects_deleted"], int)
