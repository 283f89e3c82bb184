"""A worker killed right after a processor's API deleted, through real worker processes.

The fake processor runs in the test process; once it has carried out the delete call,
it SIGKILLs the worker before answering, so the connector never learns that the call
succeeded and never marks that step committed: the step is judged from what the next
attempt finds. Another worker finishes the erasure; the signed receipt must count what
the processor really deleted, from the plan the connector journaled before the call.
In some runs an earlier step is refused first (the processor answers that it holds none
of it any more): that step is withdrawn, and the receipt must not count it. The
journaled sequence itself (plan, commit, withdraw) is checked in each connector's tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from connectors.registry import ConnectorConfig
from jobs.commands import Actor, Commands
from jobs.model import Identity, JobKind, JobStatus
from jobs.resources import open_resources
from jobs.settings import Settings
from tests.connectors.processor_servers import (
    FakeHubSpot,
    FakeProcessor,
    FakeTicketsApi,
    serve,
)
from tests.factories import connectors_toml
from tests.faults import (
    HandoverProcess,
    another_worker_takes_over,
    died,
    ended,
    killed_at_the_end,
    worker_env,
)

TOKEN = "tk_live_crash_0123456789"


def helpdesk(url: str) -> ConnectorConfig:
    """Tickets go with the subject-wide DELETE; notes have their own DELETE."""
    return ConnectorConfig(
        "helpdesk",
        "http",
        {
            "base_url": url,
            "auth": {"type": "bearer", "token": TOKEN},
            "rate_limit": 0,
            "datasets": [
                {
                    "name": "tickets",
                    "category": "contact",
                    "path": "/users/{id}/tickets",
                    "records": "/data/items",
                    "pagination": {"style": "page", "param": "page", "size_param": "per_page"},
                },
                {
                    "name": "notes",
                    "category": "contact",
                    "path": "/users/{id}/notes",
                    "pagination": {"style": "link"},
                    "erase": {"method": "DELETE", "path": "/users/{id}/notes", "absent": [404]},
                },
            ],
            "erase": {"method": "DELETE", "path": "/users/{id}", "absent": [404]},
        },
    )


def held_by_helpdesk(fake: FakeProcessor) -> dict[str, int]:
    assert isinstance(fake, FakeTicketsApi)
    user = fake.users.get("alice", {"tickets": [], "notes": []})
    return {"tickets": len(user["tickets"]), "notes": len(user["notes"])}


def held_by_hubspot(fake: FakeProcessor) -> dict[str, int]:
    assert isinstance(fake, FakeHubSpot)
    return {"contact": sum(c["email"] == "alice@example.com" for c in fake.contacts.values())}


@pytest.mark.parametrize(
    ("processor", "kill_at", "refused"),
    [
        ("helpdesk", "/users/alice/notes", False),  # the first of two steps
        # The last step; the notes' step before it was committed (and marked).
        ("helpdesk", "/users/alice", False),
        # The last step; the notes' step before it was refused (404) and withdrawn.
        ("helpdesk", "/users/alice", True),
        ("hubspot", "/gdpr-delete", False),  # the only step, one contact
        # The second contact's step; the first one's delete was refused (404), withdrawn.
        ("hubspot", "/gdpr-delete", True),
    ],
)
async def test_a_receipt_after_a_kill_counts_what_the_processor_deleted(
    redis: ArqRedis, tmp_path: Path, processor: str, kill_at: str, refused: bool
) -> None:
    fake: FakeProcessor
    vanished = dict.fromkeys(("tickets", "notes", "contact"), 0)  # gone, not by the erasure
    if processor == "helpdesk":
        tickets_api = fake = FakeTicketsApi(auth_value=f"Bearer {TOKEN}")
        fake.add_user("alice", "alice@example.com", tickets=5, notes=3)
        fake.add_user("bob", "bob@example.com", tickets=2, notes=1)
        held = held_by_helpdesk
        method = "DELETE"

        def notes_vanish() -> None:  # once counted; so their DELETE answers 404
            vanished["notes"] = len(tickets_api.users["alice"]["notes"])
            tickets_api.users["alice"]["notes"] = []
            tickets_api.fail_next(404, method="DELETE")

        if refused:
            fake.after_next("GET", "/users/alice/notes", notes_vanish)
    else:
        hubspot = fake = FakeHubSpot()
        first = fake.add_contact("alice@example.com", firstname="Alice")
        if refused:
            fake.add_contact("alice@example.com", firstname="Alice (again)")
        fake.add_contact("bob@example.com", firstname="Bob")
        held = held_by_hubspot
        method = "POST"

        def contact_vanishes() -> None:  # once found; so its delete answers 404
            del hubspot.contacts[first]
            vanished["contact"] = 1
            hubspot.fail_next(404, method="POST")

        if refused:
            fake.after_next("POST", "/search", contact_vanishes)
    before = held(fake)
    workers: list[HandoverProcess] = []

    def kill_the_worker() -> None:
        workers[0].kill()

    fake.after_next(method, kill_at, kill_the_worker)  # a refused call does not reach it
    async with serve(fake) as url:
        config = (
            helpdesk(url)
            if processor == "helpdesk"
            else ConnectorConfig(
                "hubspot", "hubspot", {"token": FakeHubSpot.TOKEN, "base_url": url, "rate_limit": 0}
            )
        )
        (tmp_path / "handover.toml").write_text(connectors_toml([config]))
        env = worker_env(tmp_path / "handover.toml", tmp_path / "data")
        with killed_at_the_end(workers):
            async with open_resources(Settings.load(env), redis=redis) as resources:
                commands = Commands(resources)
                actor = Actor("alice", staff=False)
                workers.append(HandoverProcess(env, tmp_path / "worker-1.log", logs_only=True))
                job = await commands.request_erasure(
                    actor,
                    JobKind.ERASURE,
                    subject="alice",
                    identity=Identity(identifiers={"email": "alice@example.com"}),
                )
                await commands.confirm(actor, job.id)
                await died(workers[0], "the worker to be killed after the delete call")
                workers.append(
                    await another_worker_takes_over(resources, env, tmp_path / "worker-2.log")
                )
                done = await ended(resources, job.id, workers)
    assert done.status is JobStatus.SUCCEEDED, done.error
    after = held(fake)
    deleted_by_processor = {name: before[name] - after[name] - vanished[name] for name in before}
    assert all(after[name] == 0 for name in after)
    assert done.receipt is not None
    (entry,) = done.receipt["connectors"]
    receipt: dict[str, Any] = {e["dataset"]: e["deleted"] for e in entry["datasets"]}
    assert receipt == deleted_by_processor
    assert [i["outcome"] for i in entry["interrupted_attempts"]] == ["committed"]
