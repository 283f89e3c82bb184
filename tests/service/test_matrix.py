"""Who may do what: every operation × every kind of caller, each cell's exact status.

The job a cell acts on belongs to ``alice``. Callers: nobody (no token), alice
herself (``subject-own``), another subject (``subject-other``), support, admin.
Requests that create jobs are "own" when a subject asks about themself and
"other" when a subject names someone else; staff name the subject.

A cell of an operation that changes its job (confirm, decide, cancel, retry, extend,
refuse, ask, answer, resume) gets
a fresh job of its own, and each creating cell names a subject of its own, so no
cell depends on another's outcome. An operation
added to ``OPERATIONS`` without a row here fails the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from connectors.testing import MemoryConnector
from service.api.operations import OPERATIONS
from tests.service.conftest import Api, ApiFactory

OWNER = "alice"
CALLERS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "anonymous": None,
    "subject-own": (OWNER, ("subject",)),
    "subject-other": ("bob", ("subject",)),
    "support": ("support-1", ("support",)),
    "admin": ("admin-1", ("admin",)),
}
JOB = "/v1/jobs/{job_id}"
OBJECT = "/v1/objects/{key}"
#: A processor's reply link: the token is the capability, whoever calls; a bearer token
#: grants nothing here, so a token Handover did not make is refused to every caller.
REPLY = "/v1/replies/{token}"
BREACH = "/v1/breaches/{breach_id}"
BREACH_FACTS = {
    "aware_at": "2026-12-01T08:00:00Z",
    "nature": "matrix test",
    "subject_categories": ["customers"],
    "record_categories": ["contact"],
    "consequences": "none",
    "measures": "none",
    "dpo_contact": "dpo@example.com",
}
BREACH_BODIES: dict[str, dict[str, Any]] = {
    "/v1/breaches": BREACH_FACTS,
    f"{BREACH}/versions": {"note": "matrix test", "approx_subjects": 1},
    f"{BREACH}/authority-notification": {
        "notified_at": "2026-12-02T08:00:00Z",
        "reference": "matrix",
    },
}
"""The breach register's bodies; every cell acts on the one breach made for the matrix."""
DISCLOSURE = "/v1/disclosures/{disclosure_id}"
DISCLOSURE_ORDER = {
    "subject": OWNER,
    "authority": "matrix court",
    "order_reference": "matrix",
    "legal_basis": "matrix law",
    "connectors": ["crm"],
    "notice": "deferred",
    "notice_until": "2099-01-01T00:00:00Z",
    "notice_reason": "matrix secrecy",
}
DISCLOSURE_BODIES: dict[str, dict[str, Any]] = {
    "/v1/disclosures": DISCLOSURE_ORDER,
    f"{DISCLOSURE}/extend": {"until": "2099-06-01T00:00:00Z", "reason": "matrix renewal"},
}
"""Every disclosure cell acts on the one deferred disclosure made for the matrix; its
archive link is forged, so every caller is refused (the token is the capability)."""
CREATING = {
    "/v1/exports",
    "/v1/erasures",
    "/v1/restrictions",
    "/v1/objections",
    "/v1/rectifications",
}

EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    # operation                                anonymous, subject-own, subject-other, support, admin
    ("POST", "/v1/exports"): dict(zip(CALLERS, (401, 202, 403, 202, 202), strict=True)),
    ("POST", "/v1/erasures"): dict(zip(CALLERS, (401, 202, 403, 202, 202), strict=True)),
    ("POST", "/v1/restrictions"): dict(zip(CALLERS, (401, 202, 403, 202, 202), strict=True)),
    ("POST", "/v1/objections"): dict(zip(CALLERS, (401, 202, 403, 202, 202), strict=True)),
    ("POST", "/v1/rectifications"): dict(zip(CALLERS, (401, 202, 403, 202, 202), strict=True)),
    ("POST", f"{JOB}/decide"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/lift"): dict(zip(CALLERS, (401, 403, 403, 202, 202), strict=True)),
    ("POST", f"{JOB}/confirm"): dict(zip(CALLERS, (401, 200, 404, 403, 200), strict=True)),
    ("POST", f"{JOB}/cancel"): dict(zip(CALLERS, (401, 200, 404, 200, 200), strict=True)),
    ("GET", f"{JOB}/receipt"): dict(zip(CALLERS, (401, 200, 404, 403, 200), strict=True)),
    ("GET", "/v1/jobs"): dict(zip(CALLERS, (401, 200, 403, 200, 200), strict=True)),
    ("GET", "/v1/stats"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("GET", "/v1/reports"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/retry"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/extend"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/refuse"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/ask"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/information"): dict(zip(CALLERS, (401, 200, 404, 403, 403), strict=True)),
    ("POST", f"{JOB}/resume"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/identifiers"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{JOB}/go-without"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("GET", JOB): dict(zip(CALLERS, (401, 200, 404, 200, 200), strict=True)),
    ("GET", f"{JOB}/events"): dict(zip(CALLERS, (401, 200, 404, 200, 200), strict=True)),
    ("GET", f"{JOB}/download"): dict(zip(CALLERS, (401, 303, 404, 403, 303), strict=True)),
    ("GET", OBJECT): dict(zip(CALLERS, (200, 200, 200, 200, 200), strict=True)),
    ("POST", "/v1/breaches"): dict(zip(CALLERS, (401, 403, 403, 403, 201), strict=True)),
    ("GET", "/v1/breaches"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("GET", "/v1/breaches.csv"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("GET", BREACH): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{BREACH}/versions"): dict(zip(CALLERS, (401, 403, 403, 403, 200), strict=True)),
    ("POST", f"{BREACH}/authority-notification"): dict(
        zip(CALLERS, (401, 403, 403, 403, 200), strict=True)
    ),
    # 409 for the admin: asked before the matrix's notices start (the next row); once
    # started, the worker may be done with them before the retry, or not yet.
    ("POST", f"{BREACH}/notices/retry"): dict(zip(CALLERS, (401, 403, 403, 403, 409), strict=True)),
    ("POST", f"{BREACH}/notices"): dict(zip(CALLERS, (401, 403, 403, 403, 202), strict=True)),
    ("GET", f"{BREACH}/notices"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("GET", f"{BREACH}/notices/report.csv"): dict(
        zip(CALLERS, (401, 403, 403, 200, 200), strict=True)
    ),
    ("GET", f"{BREACH}/report"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("GET", f"{BREACH}/report.html"): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", "/v1/disclosures"): dict(zip(CALLERS, (401, 403, 403, 403, 202), strict=True)),
    ("GET", DISCLOSURE): dict(zip(CALLERS, (401, 403, 403, 200, 200), strict=True)),
    ("POST", f"{DISCLOSURE}/extend"): dict(zip(CALLERS, (401, 403, 403, 403, 200), strict=True)),
    ("POST", f"{DISCLOSURE}/link"): dict(zip(CALLERS, (401, 403, 403, 403, 200), strict=True)),
    ("GET", f"{DISCLOSURE}/archive"): dict(zip(CALLERS, (403, 403, 403, 403, 403), strict=True)),
    ("GET", REPLY): dict(zip(CALLERS, (403, 403, 403, 403, 403), strict=True)),
    ("POST", REPLY): dict(zip(CALLERS, (403, 403, 403, 403, 403), strict=True)),
    ("GET", "/v1/connectors"): dict(zip(CALLERS, (401, 200, 200, 200, 200), strict=True)),
    ("GET", "/v1/recipients"): dict(zip(CALLERS, (401, 200, 200, 200, 200), strict=True)),
    ("GET", "/v1/keys"): dict(zip(CALLERS, (200, 200, 200, 200, 200), strict=True)),
    ("GET", "/metrics"): dict(zip(CALLERS, (200, 200, 200, 200, 200), strict=True)),
    ("GET", "/healthz"): dict(zip(CALLERS, (200, 200, 200, 200, 200), strict=True)),
    ("GET", "/readyz"): dict(zip(CALLERS, (200, 200, 200, 200, 200), strict=True)),
}
"""The expected status of every cell."""

PUBLIC_DOCUMENTS = ("/openapi.json", "/docs")
"""Served outside the operation table, to anyone."""

CHANGING = {
    f"{JOB}/confirm": "awaiting",
    f"{JOB}/decide": "objection",
    f"{JOB}/lift": "restricted",
    f"{JOB}/cancel": "awaiting",
    f"{JOB}/extend": "awaiting",
    f"{JOB}/refuse": "awaiting",
    f"{JOB}/ask": "awaiting",
    f"{JOB}/information": "asked",
    f"{JOB}/resume": "asked",
    f"{JOB}/retry": "failed",
    f"{JOB}/identifiers": "attention",
    f"{JOB}/go-without": "attention",
}
"""Operations that change their job when they succeed, and the kind of job they need."""
READ_ONLY = {
    f"{JOB}/receipt": "receipt",
    JOB: "export",
    f"{JOB}/events": "export",
    f"{JOB}/download": "export",
}
"""Operations that leave their job as it is, and the job they read."""


def test_every_operation_has_a_row_for_every_caller() -> None:
    assert set(EXPECTED) == {(op.method, op.path) for op in OPERATIONS}
    for row in EXPECTED.values():
        assert list(row) == list(CALLERS)


@dataclass
class Fixtures:
    """The jobs the cells act on, made before any cell runs."""

    export: str
    receipt: str
    links: list[str]
    """Download links, one per caller: each works once."""
    spare: dict[str, list[str]]
    """Unused jobs by kind (awaiting, failed, attention); each changing cell takes one."""
    breach: str = ""
    """The breach the register's cells read and change (only an admin's changes succeed)."""
    disclosure: str = ""
    """The deferred disclosure the disclosure cells act on, its archive ready."""

    def job_for(self, path: str) -> str:
        """The job a cell acts on: a fresh one when the operation changes it."""
        if path in READ_ONLY:
            return self.export if READ_ONLY[path] == "export" else self.receipt
        return self.spare[CHANGING[path]].pop()


async def _make_fixtures(api: Api) -> Fixtures:
    status, _, _ = await api.request("GET", "/v1/connectors")
    assert status == 200
    export = await api.export(connectors=["crm"])
    await api.wait(export["id"], "succeeded")
    links = []
    for _ in CALLERS:
        status, headers, body = await api.request("GET", f"/v1/jobs/{export['id']}/download")
        assert status == 303, body
        parts = urlsplit(headers["Location"])
        links.append(f"{parts.path}?{parts.query}")
    status, _, receipt = await api.request(
        "POST", "/v1/erasures", json={"connectors": ["crm"], "dry_run": True}
    )
    assert status == 202, receipt
    await api.wait(receipt["id"], "succeeded")

    needed = {
        "awaiting": 0,
        "failed": 0,
        "attention": 0,
        "asked": 0,
        "objection": 0,
        "restricted": 0,
    }
    for _, path in EXPECTED:
        if path in CHANGING:
            needed[CHANGING[path]] += len(CALLERS)
    spare: dict[str, list[str]] = {
        "awaiting": [],
        "failed": [],
        "attention": [],
        "asked": [],
        "objection": [],
        "restricted": [],
    }
    for _ in range(needed["restricted"]):  # bob's: alice's live erasures forbid lifting hers
        body = {"subject": "bob", "connectors": ["crm"]}
        status, _, restriction = await api.request(
            "POST", "/v1/restrictions", sub="s1", roles=("support",), json=body
        )
        assert status == 202, restriction
        await api.wait(restriction["id"], "succeeded", sub="s1", roles=("support",))
        spare["restricted"].append(restriction["id"])
    for _ in range(needed["objection"]):
        body = {"connectors": ["crm"], "purposes": ["analytics"]}
        status, _, objection = await api.request("POST", "/v1/objections", json=body)
        assert status == 202 and objection["status"] == "awaiting_confirmation", objection
        spare["objection"].append(objection["id"])
    for _ in range(needed["attention"]):
        status, _, waiting = await api.request(
            "POST", "/v1/erasures", json={"connectors": ["needy"], "dry_run": True}
        )
        assert status == 202, waiting
        await api.wait(waiting["id"], "needs_attention")
        spare["attention"].append(waiting["id"])
    for _ in range(needed["failed"]):
        failed = await api.export(connectors=["broken"])
        await api.wait(failed["id"], "failed")
        spare["failed"].append(failed["id"])
    for _ in range(needed["awaiting"]):
        status, _, erasure = await api.request("POST", "/v1/erasures", json={"connectors": ["crm"]})
        assert status == 202 and erasure["status"] == "awaiting_confirmation", erasure
        spare["awaiting"].append(erasure["id"])
    for _ in range(needed["asked"]):
        status, _, erasure = await api.request("POST", "/v1/erasures", json={"connectors": ["crm"]})
        assert status == 202, erasure
        body = {"needs": "matrix test"}
        path = f"/v1/jobs/{erasure['id']}/ask"
        status, _, asked = await api.request("POST", path, sub="s1", roles=("support",), json=body)
        assert status == 200 and asked["status"] == "awaiting_information", asked
        spare["asked"].append(erasure["id"])
    status, _, breach = await api.request(
        "POST", "/v1/breaches", sub="admin-0", roles=("admin",), json=BREACH_FACTS
    )
    assert status == 201, breach
    status, _, disclosure = await api.request(
        "POST", "/v1/disclosures", sub="admin-0", roles=("admin",), json=DISCLOSURE_ORDER
    )
    assert status == 202, disclosure
    await api.wait(disclosure["id"], sub="admin-0", roles=("admin",))
    return Fixtures(export["id"], receipt["id"], links, spare, breach["id"], disclosure["id"])


@dataclass
class Cell:
    """One request of the matrix."""

    url: str
    identity: tuple[str, tuple[str, ...]] | None
    options: dict[str, Any]


def _cell(path: str, caller: str, fixtures: Fixtures, row: int, method: str = "GET") -> Cell:
    """What the caller sends for one cell; jobs are alice's, created subjects the cell's own."""
    identity = CALLERS[caller]
    if path.startswith(JOB):
        url = path.replace("{job_id}", fixtures.job_for(path))
        if path.endswith("/extend"):
            return Cell(url, identity, {"json": {"months": 1, "reason": "matrix test"}})
        if path.endswith("/identifiers"):
            body = {"email": "alice@example.com", "verified_by": "matrix test"}
            return Cell(url, identity, {"json": body})
        if path.endswith("/lift"):
            body = {"email": "alice@example.com", "verified_by": "matrix test"}
            return Cell(url, identity, {"json": {"reason": "matrix test", "identifiers": body}})
        if path.endswith("/decide"):
            return Cell(url, identity, {"json": {"upheld": False, "grounds": "matrix test"}})
        if path.endswith("/refuse"):
            return Cell(url, identity, {"json": {"grounds": "excessive", "reason": "matrix"}})
        if path.endswith("/ask"):
            return Cell(url, identity, {"json": {"needs": "matrix test"}})
        if path.endswith("/information"):
            return Cell(url, identity, {"json": {"answer": "matrix test"}})
        if path.endswith("/go-without"):
            return Cell(url, identity, {"json": {"connectors": ["needy"], "reason": "matrix"}})
        return Cell(url, identity, {})
    if path.startswith("/v1/breaches"):
        url = path.replace("{breach_id}", fixtures.breach)
        if path.endswith("/notices") and method == "POST":
            upload = {"data": "alice\nbob,fr\n", "headers": {"Content-Type": "text/plain"}}
            return Cell(url, identity, upload)
        sent = BREACH_BODIES.get(path) if method == "POST" else None
        return Cell(url, identity, {"json": sent} if sent else {})
    if path.startswith("/v1/disclosures"):
        url = path.replace("{disclosure_id}", fixtures.disclosure)
        if path.endswith("/archive"):
            forged = f"{fixtures.disclosure}.{'0' * 32}.9999999999.{'0' * 32}"
            return Cell(f"{url}?token={forged}", identity, {})
        sent = DISCLOSURE_BODIES.get(path) if method == "POST" else None
        return Cell(url, identity, {"json": sent} if sent else {})
    if path == OBJECT:
        return Cell(fixtures.links.pop(), identity, {})
    if path == REPLY:
        forged = f"{fixtures.export}.crm.1.{'0' * 16}.9999999999.{'0' * 32}"
        return Cell(path.replace("{token}", forged), identity, {"json": {"by": "matrix"}})
    if path == "/v1/jobs":
        return Cell(f"/v1/jobs?subject={OWNER}", identity, {})
    if path == "/v1/reports":
        return Cell("/v1/reports?from=2026-11-01&to=2026-11-30", identity, {})
    if path in CREATING:
        named = f"subject-{row}-{caller}"
        asked: dict[str, Any] = {"connectors": ["crm"]}
        if path == "/v1/objections":
            asked["purposes"] = ["direct_marketing"]
        if path == "/v1/rectifications":
            fix = {"connector": "crm", "dataset": "contacts", "field": "name", "value": "A"}
            asked = {"changes": [fix]}
        if caller == "subject-own":
            return Cell(path, (named, ("subject",)), {"json": asked})
        return Cell(path, identity, {"json": {**asked, "subject": named}})
    return Cell(path, identity, {})


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    crm = MemoryConnector(
        "crm",
        records={OWNER: {"contacts": [{"id": 1, "email": "alice@example.com"}]}},
        objection_purposes=["direct_marketing", "analytics"],
        rectifiable={"contacts.name": "text"},
    )
    broken = MemoryConnector("broken", fail="broken API answered 403: key revoked")
    needy = MemoryConnector("needy", records={OWNER: {"contacts": [{"id": 2}]}})
    needy.identifiers = frozenset({"email"})  # a processor keyed by email: alice has none yet
    # Confirmed erasures wait out a grace period: one that ran would erase alice's archives
    # (and end her exports), which the cells after it read.
    return await api_factory(
        {"crm": crm, "broken": broken, "needy": needy},
        s3_bucket=None,
        rate_limit=0,
        subject_rate_limit=0,
        erasure_grace=timedelta(hours=24),
    )


async def test_every_operation_answers_every_caller_as_the_table_says(api: Api) -> None:
    fixtures = await _make_fixtures(api)
    got: dict[tuple[str, str], dict[str, int]] = {}
    for number, ((method, path), row) in enumerate(EXPECTED.items()):
        got[(method, path)] = {}
        for caller in row:
            cell = _cell(path, caller, fixtures, number, method)
            sub, roles = cell.identity or (None, ())
            status, headers, body = await api.request(
                method, cell.url, sub=sub, roles=roles, **cell.options
            )
            got[(method, path)][caller] = status
            if status >= 400:
                assert headers["Content-Type"].startswith("application/problem+json"), cell
                assert body["status"] == status, body
            if status == 401:
                assert headers["WWW-Authenticate"].startswith("Bearer"), cell
    mismatches = {
        f"{method} {path} as {caller}: expected {expected}, got {got[(method, path)][caller]}"
        for (method, path), row in EXPECTED.items()
        for caller, expected in row.items()
        if got[(method, path)][caller] != expected
    }
    assert not mismatches, "\n".join(sorted(mismatches))


async def test_the_documents_are_public(api: Api) -> None:
    for path in PUBLIC_DOCUMENTS:
        for identity in CALLERS.values():
            sub, roles = identity or (None, ())
            status, _, _ = await api.request("GET", path, sub=sub, roles=roles)
            assert status == 200, (path, identity)
