"""``[recipients.NAME]`` in the configuration file: what it takes, and each mistake named in
one line; and a message waiting for its job to end (the telling itself is tested over HTTP,
tests/service/test_recipients_api.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from connectors.testing import MemoryConnector
from jobs.erasure import ErasurePipeline
from jobs.model import Identity, JobKind, JobStatus
from jobs.notices import MAX_TRIES
from jobs.recipients import Recipients
from jobs.settings import RecipientConfig, Settings, SettingsError
from jobs.worker import create_worker
from tests.factories import options_for
from tests.jobs.test_notices import smtp
from tests.mailserver import mail_server
from tests.polling import eventually


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "handover.toml"
    path.write_text(text)
    return Settings.load({"HANDOVER_CONFIG": str(path)})


def test_a_recipient_is_read_with_its_contact_description_and_identifiers(
    tmp_path: Path,
) -> None:
    settings = load(
        tmp_path,
        "[recipients.insurer]\n"
        'contact = "Insurer DPO <dpo@insurer.example>"\n'
        'description = "Insurer of the devices"\n'
        'identifiers = ["email", "id"]\n'
        "[recipients.bank]\n"
        'contact = "privacy@bank.example"\n',
    )

    assert settings.recipients == (
        RecipientConfig(
            "insurer", "dpo@insurer.example", "Insurer of the devices", ("email", "id")
        ),
        RecipientConfig("bank", "privacy@bank.example", None, ("email",)),
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[recipients.insurer]\n", r"\[recipients.insurer\] needs a contact"),
        (
            '[recipients.insurer]\ncontact = "not an address"\n',
            r"\[recipients.insurer\]: contact: expected an email address",
        ),
        (
            '[recipients.insurer]\ncontact = "a@b.example"\nphone = "1"\n',
            r"unknown key\(s\) phone",
        ),
        (
            '[recipients.insurer]\ncontact = "a@b.example"\nidentifiers = "email"\n',
            r"identifiers must be a list of names",
        ),
        ('[recipients.Insurer]\ncontact = "a@b.example"\n', "lowercase letters"),
        (
            '[connectors.crm]\ntype = "demo"\n[recipients.crm]\ncontact = "a@b.example"\n',
            r"\[recipients.crm\] is also a connector",
        ),
    ],
    ids=["no-contact", "bad-contact", "unknown-key", "identifiers-text", "name", "connector"],
)
def test_a_recipient_misconfigured_is_named_in_one_line(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as raised:
        load(tmp_path, toml)

    assert str(raised.value).startswith("HANDOVER_CONFIG: ")
    assert "\n" not in str(raised.value)


async def test_a_message_waits_for_its_job_to_end_however_long_it_runs(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    insurer = RecipientConfig("insurer", "privacy@insurer.example", None, ("email",))
    crm = {"crm": MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})}
    with mail_server() as (inbox, port):
        overrides = {**smtp(port), "recipients": (insurer,)}
        async with resources_factory(crm, **overrides) as resources:
            known = Identity()
            known.add({"email": "alice@example.com"}, {"source": "token", "verified_by": "test"})
            job = ErasurePipeline(resources).new_job(
                JobKind.RESTRICTION,
                subject="alice",
                requested_by="alice",
                connectors=["crm"],
                options=options_for(JobKind.RESTRICTION),
                identity=known,
            )
            await resources.store.create(job)
            running = await resources.store.transition(job.id, JobStatus.RUNNING, actor="test")
            assert running is not None
            recipients = Recipients(resources)
            await recipients.queue(running)  # the finish's complete(), before the job moves

            # Its last try by the old count, the job still running: it keeps waiting.
            await recipients.deliver(job.id, "insurer", attempt=MAX_TRIES)

            assert [s["state"] for s in await recipients.statements(job.id)] == ["queued"]
            await resources.store.transition(job.id, JobStatus.SUCCEEDED, actor="test")
            worker = create_worker(
                resources.settings,
                redis=redis,
                resources=resources,
                poll_delay=0.01,
                handle_signals=False,
            )
            task = asyncio.create_task(worker.async_run())
            try:
                # told once the mail was handed over and recorded, not merely received
                await eventually(
                    lambda: recipients.statements(job.id),
                    until=lambda told: [s["state"] for s in told] == ["told"],
                    timeout=15,
                    what="the insurer told",
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert inbox.received
