"""Recipients that are not connectors (GDPR Art. 19) over HTTP: told by email through a real
SMTP server once the job succeeded, recorded on the timeline, listed in the signed receipt
as told (with the Message-ID) or not told (with why); and ``GET /v1/recipients``."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

from connectors.testing import MemoryConnector
from jobs.mail import read_maildir
from jobs.notices import maildir_path
from jobs.recipients import Recipients
from jobs.settings import RecipientConfig
from tests.mailserver import Inbox, Received, mail_server
from tests.polling import eventually
from tests.service.conftest import ALICE_EMAIL, Api, ApiFactory
from tests.service.test_objection_api import receipt_of

INSURER = RecipientConfig(
    "insurer", "privacy@insurer.example", "Insurer of the devices", ("email",)
)
#: Knows subjects by a phone number, which no test subject has: it cannot be told.
CARRIER = RecipientConfig("carrier", "dpo@carrier.example", None, ("phone_number",))


def platform() -> dict[str, MemoryConnector]:
    return {
        "crm": MemoryConnector(
            "crm",
            records={"alice": {"contacts": [{"id": 1, "name": "Alice Martin"}]}},
            rectifiable={"contacts.name": "text"},
        )
    }


async def start(api_factory: ApiFactory, port: int, **overrides: Any) -> Api:
    return await api_factory(
        platform(),
        smtp_url=f"smtp://127.0.0.1:{port}",
        mail_from="Platform privacy <privacy@platform.example>",
        privacy_url="https://privacy.platform.example/{job}",
        erasure_grace=timedelta(0),
        recipients=(INSURER, CARRIER),
        **overrides,
    )


async def mail_to(inbox: Inbox, address: str) -> Received:
    found = await eventually(
        lambda: [r for r in inbox.received if address in r.recipients],
        timeout=15,
        what=f"a message to {address}",
    )
    return found[0]


async def settled_receipt(api: Api, job_id: str, tmp_path: Path) -> dict[str, Any]:
    """The receipt once it names no recipient still queued, checked as ``handover verify``."""

    async def current() -> dict[str, Any]:
        return await receipt_of(api, job_id, tmp_path)

    return await eventually(
        current,
        until=lambda receipt: all(r["state"] != "queued" for r in receipt["recipients"]),
        timeout=20,
        what="the receipt signed again with every recipient settled",
    )


async def renamed(api: Api) -> dict[str, Any]:
    """Alice's name corrected to "A. Dupont" at crm, at her request: the succeeded job."""
    change = {"connector": "crm", "dataset": "contacts", "field": "name", "value": "A. Dupont"}
    status, _, job = await api.request(
        "POST",
        "/v1/rectifications",
        sub=None,
        headers=api.email_auth(),
        json={"changes": [change], "reason": "I married"},
    )
    assert status == 202, job
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    return done


async def timeline(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, _, body = await api.request("GET", f"/v1/jobs/{job_id}/events", roles=("admin",))
    assert status == 200, body
    return body["events"]  # type: ignore[no-any-return]


async def test_a_rectification_is_told_to_each_recipient_and_the_receipt_says_how(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        job = await renamed(api)

        mail = await mail_to(inbox, "privacy@insurer.example")
        words = mail.words()
        assert "Art. 16 (rectification), told to recipients under Art. 19" in words
        assert f"email: {ALICE_EMAIL}" in words and "contacts.name" in words
        assert "A. Dupont" not in mail.text() and "Alice Martin" not in mail.text()
        assert "alice" not in mail.text().replace(ALICE_EMAIL, "")  # no identifier not needed
        assert not [r for r in inbox.received if "dpo@carrier.example" in r.recipients]

        receipt = await settled_receipt(api, job["id"], tmp_path)
        told, not_told = receipt["recipients"]
        assert told["recipient"] == "insurer" and told["state"] == "told"
        assert told["message_id"] == str(mail.message["Message-ID"]).strip()
        assert told["description"] == "Insurer of the devices" and told["via"] == "smtp"
        assert not_told["recipient"] == "carrier" and not_told["state"] == "not_told"
        assert "phone_number" in not_told["why"]
        assert "first_issued_at" in receipt and "A. Dupont" not in str(receipt)

        events = await timeline(api, job["id"])
        sent = [e for e in events if e["type"] == "recipient.told"]
        assert [e["message_id"] for e in sent] == [told["message_id"]]
        assert any(e["type"] == "recipient.not_told" for e in events)
        assert any(e["type"] == "receipt.reissued" for e in events)


async def test_what_a_job_says_of_its_recipients_holds_whatever_is_configured_later(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        job = await renamed(api)
        await mail_to(inbox, "privacy@insurer.example")
        receipt = await settled_receipt(api, job["id"], tmp_path)
    bank = RecipientConfig("bank", "privacy@bank.example", "The bank", ("email",))
    settings = api.resources.settings.model_copy(update={"recipients": (bank,)})
    redeployed = Recipients(dataclasses.replace(api.resources, settings=settings))

    await redeployed.reissue(job["id"])  # as a task delivered again after a redeploy does

    assert await redeployed.statements(job["id"]) == receipt["recipients"]
    assert [r["recipient"] for r in receipt["recipients"]] == ["insurer", "carrier"]
    assert (await receipt_of(api, job["id"], tmp_path)) == receipt  # not signed again


async def test_a_recipient_whose_server_refuses_is_never_said_to_be_told(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        inbox.refusal = "550 5.1.1 no such mailbox"
        api = await start(api_factory, port)
        status, _, job = await api.request(
            "POST", "/v1/restrictions", sub=None, headers=api.email_auth(), json={}
        )
        assert status == 202, job
        assert (await api.wait(job["id"]))["status"] == "succeeded"

        receipt = await settled_receipt(api, job["id"], tmp_path)
        insurer = receipt["recipients"][0]
        assert insurer["recipient"] == "insurer" and insurer["state"] == "not_told"
        assert "refused the recipient (550)" in insurer["why"]
        assert "message_id" not in insurer
        assert not any(e["type"] == "recipient.told" for e in await timeline(api, job["id"]))


async def test_a_recipient_that_cannot_take_mail_now_is_told_on_a_later_try(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        inbox.refusal = "451 4.3.0 try again later"
        api = await start(api_factory, port)
        status, _, job = await api.request(
            "POST", "/v1/restrictions", sub=None, headers=api.email_auth(), json={}
        )
        assert status == 202, job
        assert (await api.wait(job["id"]))["status"] == "succeeded"
        await eventually(lambda: inbox.refused, timeout=15, what="a first attempt refused")
        first = await receipt_of(api, job["id"], tmp_path)
        assert first["recipients"][0]["state"] == "queued"  # not handed over: not "told"
        inbox.refusal = None

        mail = await mail_to(inbox, "privacy@insurer.example")
        assert "Art. 18 (restriction of processing)" in mail.words()
        receipt = await settled_receipt(api, job["id"], tmp_path)
        assert receipt["recipients"][0]["state"] == "told"
        assert receipt["recipients"][0]["message_id"] == str(mail.message["Message-ID"]).strip()


async def test_a_dry_run_tells_no_recipient(api_factory: ApiFactory) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        status, _, job = await api.request(
            "POST", "/v1/erasures", sub=None, headers=api.email_auth(), json={"dry_run": True}
        )
        assert status == 202, job
        assert (await api.wait(job["id"]))["status"] == "succeeded"
        status, _, receipt = await api.request("GET", f"/v1/jobs/{job['id']}/receipt")
        assert status == 200, receipt
        assert "recipients" not in receipt
        assert not [r for r in inbox.received if "insurer" in " ".join(r.recipients)]


async def test_the_subject_and_staff_can_ask_who_the_recipients_are(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory(platform(), recipients=(INSURER,))
    for roles in ((), ("support",)):
        status, _, body = await api.request("GET", "/v1/recipients", roles=roles)
        assert status == 200, body
        assert body["recipients"] == [
            {
                "name": "crm",
                "recipient": None,
                "categories": ["identification", "usage"],
                "told_by": "connector",
            },
            {
                "name": "insurer",
                "recipient": "Insurer of the devices",
                "categories": [],
                "told_by": "email",
            },
        ]


async def test_the_lifting_of_a_restriction_is_told_as_the_restriction_was(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    with mail_server() as (inbox, port):
        api = await start(api_factory, port)
        status, _, restriction = await api.request(
            "POST", "/v1/restrictions", sub=None, headers=api.email_auth(), json={}
        )
        assert status == 202, restriction
        assert (await api.wait(restriction["id"]))["status"] == "succeeded"
        await mail_to(inbox, "privacy@insurer.example")
        identifiers = {"email": ALICE_EMAIL, "verified_by": "the address on her account"}
        status, _, job = await api.request(
            "POST",
            f"/v1/jobs/{restriction['id']}/lift",
            sub="s1",
            roles=("support",),
            json={"reason": "the accuracy was verified", "identifiers": identifiers},
        )
        assert status == 202, job
        done = await api.wait(job["id"], sub="s1", roles=("support",))
        assert done["status"] == "succeeded", done

        lifted = await eventually(
            lambda: [
                r for r in inbox.received if "recipient.insurer" in str(r.message["Message-ID"])
            ],
            until=lambda found: len(found) == 2,
            timeout=15,
            what="the lifting told to the insurer",
        )
        assert "Art. 18(3) (lifting of a restriction)" in lifted[1].words()
        receipt = await settled_receipt(api, job["id"], tmp_path)
        assert receipt["job"]["told"]["notice"] == "restriction_lifting"
        assert receipt["recipients"][0]["state"] == "told"


async def test_without_smtp_the_message_is_filed_in_the_embedded_maildir(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    api = await api_factory(platform(), recipients=(INSURER,), erasure_grace=timedelta(0))
    status, _, job = await api.request(
        "POST", "/v1/restrictions", sub=None, headers=api.email_auth(), json={}
    )
    assert status == 202, job
    assert (await api.wait(job["id"]))["status"] == "succeeded"

    receipt = await settled_receipt(api, job["id"], tmp_path)
    insurer = receipt["recipients"][0]
    assert insurer["state"] == "told" and insurer["via"] == "maildir"
    path = maildir_path(api.resources.settings)
    assert path is not None
    filed = [m for m in read_maildir(path) if m.message_id == insurer["message_id"]]
    assert [m.to for m in filed] == ["privacy@insurer.example"]
    assert f"email: {ALICE_EMAIL}" in filed[0].text
