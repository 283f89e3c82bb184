"""The breach register through the API and the command line, as a DPO would use them."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from jobs import breach_notices
from jobs.breaches import BreachRegister
from jobs.kinds import build_pipelines
from jobs.model import iso, utcnow
from jobs.worker import watch_breach_clocks
from tests.jobs.test_breach_notices import directory
from tests.jobs.test_notices import smtp
from tests.mailserver import mail_server
from tests.polling import eventually
from tests.service.conftest import Api, ApiFactory
from tests.service.test_cli import handover, write_key

ADMIN = ("admin-1", ("admin",))
SUPPORT = ("support-1", ("support",))


def breach_body(aware_hours_ago: float, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "aware_at": iso(utcnow() - timedelta(hours=aware_hours_ago)),
        "nature": "A support laptop holding an export of device owners was stolen.",
        "subject_categories": ["device owners"],
        "record_categories": ["contact", "device"],
        "consequences": "Phishing using names and device models.",
        "measures": "Sessions revoked; owners to be warned.",
        "dpo_contact": "dpo@example.com",
    }
    return {**body, **changes}


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory({}, worker=False)


async def record(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    status, headers, breach = await api.request(
        "POST", "/v1/breaches", sub=ADMIN[0], roles=ADMIN[1], json=body
    )
    assert status == 201, breach
    assert headers["Location"] == f"/v1/breaches/{breach['id']}"
    return breach  # type: ignore[no-any-return]


async def test_a_breach_recorded_at_50_hours_is_at_risk_then_overdue_and_its_report_verifies(
    api: Api, tmp_path: Path
) -> None:
    breach = await record(api, breach_body(50))
    assert breach["clock"] == "at_risk"
    assert breach["facts"]["approx_subjects"] is None  # not yet known, not 0
    aware = utcnow() - timedelta(hours=50)
    # The cron at the 72nd hour finds it overdue, and the register says so then.
    ctx = {"handover_pipelines": build_pipelines(api.resources)}
    later = aware + timedelta(hours=72, minutes=5)
    assert await watch_breach_clocks(ctx, now=later) == 1
    stored = await BreachRegister.of(api.resources).get(breach["id"])
    assert stored.clock(later).value == "overdue"

    path = f"/v1/breaches/{breach['id']}"
    status, _, updated = await api.request(
        "POST",
        f"{path}/versions",
        sub=ADMIN[0],
        roles=ADMIN[1],
        json={"note": "forensics counted them", "approx_subjects": 1180},
    )
    assert status == 200, updated
    assert [v["facts"]["approx_subjects"] for v in updated["versions"]] == [None, 1180]

    status, _, report = await api.request("GET", f"{path}/report", sub=SUPPORT[0], roles=SUPPORT[1])
    assert status == 200, report
    assert report["format"] == "handover-breach-report" and report["version"] == 2
    saved = tmp_path / "report.json"
    saved.write_bytes(orjson.dumps(report))
    key = write_key(tmp_path, api.resources.signer)
    verified = await asyncio.to_thread(handover, "verify", str(saved), "--key", str(key))
    assert verified.returncode == 0, verified.stderr
    assert f"breach report of breach {breach['id']} (version 2)" in verified.stdout
    report["nature"]["approx_subjects"] = 3
    saved.write_bytes(orjson.dumps(report))
    forged = await asyncio.to_thread(handover, "verify", str(saved), "--key", str(key))
    assert forged.returncode == 1 and "does not match the signed bytes" in forged.stderr

    status, headers, page = await api.request(
        "GET", f"{path}/report.html", sub=ADMIN[0], roles=ADMIN[1]
    )
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    text = page.decode()
    assert "approximately 1180" in text and "not recorded yet" in text

    # Notified now, 50 h after awareness: on time, the clock stops; recorded once only.
    notice = {"notified_at": iso(utcnow()), "reference": "CNIL-2026-04417"}
    status, _, done = await api.request(
        "POST", f"{path}/authority-notification", sub=ADMIN[0], roles=ADMIN[1], json=notice
    )
    assert status == 200 and done["clock"] == "notified", done
    status, _, again = await api.request(
        "POST", f"{path}/authority-notification", sub=ADMIN[0], roles=ADMIN[1], json=notice
    )
    assert status == 409, again

    entries = await api.resources.audit.entries()
    actions = [e["action"] for e in entries if e.get("breach") == breach["id"]]
    assert sorted(actions) == sorted(
        [
            "breach.recorded",
            "breach.updated",
            "breach.report_issued",
            "breach.report_issued",
            "breach.authority_notified",
        ]
    )


async def test_the_register_exports_with_its_history_and_counts_in_metrics(api: Api) -> None:
    overdue = await record(api, breach_body(80))
    assert overdue["clock"] == "overdue"
    running = await record(api, breach_body(1, approx_records=40))
    status, _, _ = await api.request(
        "POST",
        f"/v1/breaches/{running['id']}/versions",
        sub=ADMIN[0],
        roles=ADMIN[1],
        json={"note": "more found", "approx_records": 52},
    )
    assert status == 200
    # Notified 78 h after awareness: refused without the reasons for the delay.
    path = f"/v1/breaches/{overdue['id']}/authority-notification"
    late = {"notified_at": iso(utcnow() - timedelta(hours=2)), "reference": "CNIL-7"}
    status, _, problem = await api.request("POST", path, sub=ADMIN[0], roles=ADMIN[1], json=late)
    assert status == 422 and "delay_reasons" in problem["detail"], problem
    status, _, still = await api.request(
        "GET", f"/v1/breaches/{overdue['id']}", sub=SUPPORT[0], roles=SUPPORT[1]
    )
    assert still["clock"] == "overdue" and still["notification"] is None
    status, _, register = await api.request("GET", "/v1/breaches", sub=SUPPORT[0], roles=SUPPORT[1])
    assert status == 200
    assert [(b["id"], b["version"]) for b in register["breaches"]] == [
        (running["id"], 2),
        (overdue["id"], 1),
    ]
    status, headers, raw = await api.request(
        "GET", "/v1/breaches.csv", sub=SUPPORT[0], roles=SUPPORT[1]
    )
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [(r["breach"], r["version"], r["approx_records"]) for r in rows] == [
        (running["id"], "1", "40"),
        (running["id"], "2", "52"),
        (overdue["id"], "1", ""),
    ]
    status, _, metrics = await api.request("GET", "/metrics", sub=None)
    assert 'handover_breaches{clock="overdue"} 1' in metrics.decode()
    assert 'handover_breaches{clock="running"} 1' in metrics.decode()


async def test_bad_input_and_the_wrong_caller_are_refused_clearly(api: Api) -> None:
    status, _, problem = await api.request(
        "POST", "/v1/breaches", sub=SUPPORT[0], roles=SUPPORT[1], json=breach_body(1)
    )
    assert status == 403, problem
    status, _, problem = await api.request("GET", "/v1/breaches", sub="alice")
    assert status == 403, problem
    for body, field in (
        (breach_body(-2), "aware_at"),
        ({k: v for k, v in breach_body(1).items() if k != "measures"}, "measures"),
        (breach_body(1, approx_subjects=-1), "approx_subjects"),
        (breach_body(1, aware_at="2026-12-01T08:00:00"), "aware_at"),
    ):
        status, headers, problem = await api.request(
            "POST", "/v1/breaches", sub=ADMIN[0], roles=ADMIN[1], json=body
        )
        assert status == 422, (field, problem)
        assert headers["Content-Type"].startswith("application/problem+json")
        assert field in orjson.dumps(problem).decode(), problem
    breach = await record(api, breach_body(5))
    status, _, problem = await api.request(
        "POST",
        f"/v1/breaches/{breach['id']}/versions",
        sub=ADMIN[0],
        roles=ADMIN[1],
        json={"note": "moved", "aware_at": iso(utcnow())},
    )
    assert status == 422, problem  # awareness is not a field an update can carry
    status, _, problem = await api.request(
        "GET", "/v1/breaches/not-an-id", sub=ADMIN[0], roles=ADMIN[1]
    )
    assert status == 404, problem
    status, _, problem = await api.request(
        "GET", "/v1/breaches/01JD2Z6S41ABCDEFGHJKMNPQRS", sub=ADMIN[0], roles=ADMIN[1]
    )
    assert status == 404, problem


@pytest.mark.slow
async def test_the_command_line_records_updates_and_exports(api: Api, tmp_path: Path) -> None:
    env = {"HANDOVER_URL": api.base, "HANDOVER_TOKEN": api.token("admin-1", "admin")}

    def run(*args: str) -> Any:
        return handover("breach", *args, env=env)

    aware = iso(utcnow() - timedelta(hours=49))
    recorded = await asyncio.to_thread(
        run,
        "record",
        "--aware-at",
        aware,
        "--nature",
        "Backups bucket made public",
        "--subject-category",
        "customers",
        "--record-category",
        "contact",
        "--consequences",
        "Spam",
        "--measures",
        "Bucket closed",
        "--dpo",
        "dpo@example.com",
    )
    assert recorded.returncode == 0, recorded.stderr
    assert "(at risk)" in recorded.stdout
    breach_id = recorded.stdout.split()[1]
    updated = await asyncio.to_thread(
        run, "update", breach_id, "--note", "counted", "--records", "9"
    )
    assert updated.returncode == 0, updated.stderr
    listed = await asyncio.to_thread(run, "list")
    assert "AT RISK" in listed.stdout and breach_id in listed.stdout
    shown = await asyncio.to_thread(run, "show", breach_id)
    assert "about 9 (contact)" in shown.stdout and "2  " in shown.stdout
    target = tmp_path / "register.csv"
    exported = await asyncio.to_thread(run, "export", "--csv", "--output", str(target))
    assert exported.returncode == 0, exported.stderr
    assert len(list(csv.DictReader(io.StringIO(target.read_text())))) == 2
    report = tmp_path / "report.json"
    saved = await asyncio.to_thread(run, "report", breach_id, "--output", str(report))
    assert saved.returncode == 0, saved.stderr
    key = write_key(tmp_path, api.resources.signer)
    verified = await asyncio.to_thread(handover, "verify", str(report), "--key", str(key))
    assert verified.returncode == 0, verified.stderr
    late = await asyncio.to_thread(
        run, "notified", breach_id, "--at", iso(utcnow()), "--reference", "R-1"
    )
    assert late.returncode == 0, late.stderr  # within 72 h: no reasons needed
    subjects = tmp_path / "affected.txt"
    subjects.write_text("u1\nu2,fr\n")
    notify = await asyncio.to_thread(run, "notify", breach_id, "--subjects", str(subjects))
    assert notify.returncode == 0, notify.stderr
    assert f"breach {breach_id}: telling 2 subjects" in notify.stdout
    progress = await asyncio.to_thread(run, "notices", breach_id)
    assert "sending; of 2: 0 sent" in progress.stdout and "2 pending" in progress.stdout
    report_file = tmp_path / "notices.csv"
    saved = await asyncio.to_thread(run, "notices", breach_id, "--report", str(report_file))
    assert saved.returncode == 0, saved.stderr
    listed = list(csv.DictReader(io.StringIO(report_file.read_text())))
    assert [(r["subject"], r["status"]) for r in listed] == [("u1", "pending"), ("u2", "pending")]
    missing = await asyncio.to_thread(
        run, "notify", breach_id, "--subjects", str(tmp_path / "none.txt")
    )
    assert missing.returncode == 1 and "none.txt: cannot read it" in missing.stderr
    bad = await asyncio.to_thread(
        run, "notified", breach_id, "--at", "yesterday", "--reference", "x"
    )
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    again = await asyncio.to_thread(
        run, "notified", breach_id, "--at", iso(utcnow()), "--reference", "R-2"
    )
    assert again.returncode == 1 and again.stderr.startswith("handover: 409 Conflict")


async def test_affected_subjects_are_told_through_the_api_and_the_report_lists_each(
    api_factory: ApiFactory,
) -> None:
    with mail_server() as (inbox, port):
        api = await api_factory({"directory": directory(50)}, **smtp(port))
        breach = await record(api, breach_body(20))
        path = f"/v1/breaches/{breach['id']}/notices"

        async def streamed() -> AsyncIterator[bytes]:
            for n in range(50):
                yield f"u{n}{',de' if n == 1 else ''}\n".encode()

        status, _, problem = await api.request(
            "POST", path, sub=ADMIN[0], roles=ADMIN[1], json={"subjects": ["u1"]}
        )
        assert status == 415, problem
        plain = {"Content-Type": "text/plain"}
        status, _, problem = await api.request(
            "POST", path, sub=ADMIN[0], roles=ADMIN[1], data=b"u1\nu2\n\xff\n", headers=plain
        )
        assert status == 422 and "line 3" in problem["detail"], problem
        status, headers, started = await api.request(
            "POST", path, sub=ADMIN[0], roles=ADMIN[1], data=streamed(), headers=plain
        )
        assert status == 202, started
        assert headers["Location"] == path and started["total"] == 50
        done = await eventually(
            lambda: api.request("GET", path, sub=SUPPORT[0], roles=SUPPORT[1]),
            until=lambda answer: answer[2]["state"] == "done",
            timeout=60,
            what="the notices to be sent",
        )
        progress = done[2]
        status, _, again = await api.request(
            "POST", path, sub=ADMIN[0], roles=ADMIN[1], data=b"u1\n", headers=plain
        )
        assert status == 409, again
        # With an Idempotency-Key (the body read whole to fingerprint it): a small upload
        # goes, and its repeat is the first answer again, not a second fan-out.
        other = await record(api, breach_body(2))
        keyed = {**plain, "Idempotency-Key": "notify-1"}
        other_path = f"/v1/breaches/{other['id']}/notices"
        for _ in range(2):
            status, headers, keyed_answer = await api.request(
                "POST", other_path, sub=ADMIN[0], roles=ADMIN[1], data=b"u1\nu2\n", headers=keyed
            )
            assert status == 202 and keyed_answer["total"] == 2, keyed_answer
        assert headers.get("Idempotent-Replayed") == "true"
        status, headers, raw = await api.request(
            "GET", f"{path}/report.csv", sub=SUPPORT[0], roles=SUPPORT[1]
        )
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [row["subject"] for row in rows] == [f"u{n}" for n in range(50)]
    unreachable = [row["subject"] for row in rows if row["status"] == "no_address"]
    assert unreachable == [f"u{n}" for n in range(0, 50, 7)]
    about = [r for r in inbox.received if r.message["X-Handover-Breach"] == breach["id"]]
    assert progress["sent"] == 50 - len(unreachable) == len(about)
    assert rows[1]["language"] == "de" and rows[1]["message_id"].startswith("<handover.breach.")


async def test_an_upload_past_its_bounds_is_refused_whole_and_the_report_defuses_formulas(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    breach = await record(api, breach_body(5))
    path = f"/v1/breaches/{breach['id']}/notices"
    plain = {"Content-Type": "text/plain"}
    monkeypatch.setattr(breach_notices, "MAX_UPLOAD_LINES", 3)
    monkeypatch.setattr(breach_notices, "MAX_UPLOAD_BYTES", 40)
    for body, what in (
        (b"u1\nu2\nu3\nu4\n", "3 lines"),
        (b"a-long-subject-id-" * 3 + b"\n", "40 bytes"),
    ):
        status, _, problem = await api.request(
            "POST", path, sub=ADMIN[0], roles=ADMIN[1], data=body, headers=plain
        )
        assert status == 413 and problem["type"].endswith("upload-too-large"), problem
        assert f"more than {what}" in problem["detail"], problem
        kept = [k async for k in api.resources.redis.scan_iter(match=f"*{breach['id']}:art34*")]
        assert kept == []
    formulas = b"=1+2\n@SUM(A1)\n-3\n"
    status, _, started = await api.request(
        "POST", path, sub=ADMIN[0], roles=ADMIN[1], data=formulas, headers=plain
    )
    assert status == 202, started
    status, _, raw = await api.request(
        "GET", f"{path}/report.csv", sub=SUPPORT[0], roles=SUPPORT[1]
    )
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [row["subject"] for row in rows] == ["'=1+2", "'@SUM(A1)", "'-3"]
    # Failed lines are sent again only once every line has an outcome: here none has yet.
    env = {"HANDOVER_URL": api.base, "HANDOVER_TOKEN": api.token("admin-1", "admin")}
    retried = await asyncio.to_thread(handover, "breach", "retry-notices", breach["id"], env=env)
    assert retried.returncode == 1 and "409" in retried.stderr, retried.stderr
    assert "failed lines are sent again once every line has an outcome" in retried.stderr
