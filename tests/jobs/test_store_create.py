"""A new job is created whole or not at all, whatever Redis command the connection dies at.

Between ``Commands.request_export`` and the real Redis runs a proxy that forwards
whole commands and counts them. At command *k* it fails, once for every *k* the
request sends: either the command never reaches Redis, or Redis runs it and its
answer is lost; then Redis stays unreachable. Whatever *k*, the store holds the
export with everything that begins it (its indexes and counts, its ``created``
event, the subject's live-export mark, its first task in the queue, its audit
entry) or none of it. A connection cut once, with Redis still there, is retried
by the client and creates the job exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from connectors.testing import MemoryConnector
from jobs.audit import AuditLog
from jobs.commands import Actor, Commands
from jobs.queue import API_RETRIES, QUEUE_NAME, REDIS_UNAVAILABLE, connect
from jobs.resources import open_resources
from jobs.settings import Settings
from tests.faults import CuttingProxy, cutting_proxy

NS = "handover:"
SUBJECT = "s-7d21"


@dataclass(frozen=True)
class Stored:
    """What the store holds of the subject's exports."""

    jobs: list[str]
    created_events: int
    counts: dict[bytes, bytes]
    indexed: int
    active: bytes | None
    queued: list[bytes]
    task_payloads: int
    audit: list[bytes]


async def stored(client: ArqRedis) -> Stored:
    """Everything a created export leaves, read straight from Redis."""
    redis: Any = client
    await AuditLog(redis, NS).seal()
    jobs = sorted(
        key.decode()[len(f"{NS}job:") :]
        for key in await redis.keys(f"{NS}job:*")
        if not key.endswith(b":events")
    )
    events = [
        fields[b"type"]
        for job_id in jobs
        for _, fields in await redis.xrange(f"{NS}job:{job_id}:events")
    ]
    # The job's own first task (another feature may queue tasks of its own, a notice).
    queued = [
        task for task in await redis.zrange(QUEUE_NAME, 0, -1) if task.startswith(b"resolve:")
    ]
    return Stored(
        jobs=jobs,
        created_events=events.count(b"created"),
        counts=await redis.hgetall(f"{NS}counts"),
        indexed=await redis.zcard(f"{NS}idx:created"),
        active=await redis.get(f"{NS}active:export:{SUBJECT}"),
        queued=queued,
        task_payloads=sum([await redis.exists(f"arq:job:{task.decode()}") for task in queued]),
        audit=[entry["action"].encode() for entry in await AuditLog(redis, NS).entries()],
    )


def whole_or_nothing(found: Stored) -> str:
    """``"whole"`` or ``"nothing"``; an assertion error naming what is half there."""
    if not found.jobs:
        assert found == Stored([], 0, {}, 0, None, [], 0, []), found
        return "nothing"
    (job_id,) = found.jobs
    assert found.created_events == 1, found
    assert found.counts == {b"export:queued": b"1"}, found
    assert found.indexed == 1 and found.active == job_id.encode(), found
    assert [task.rsplit(b":", 1)[0] for task in found.queued] == [f"resolve:{job_id}".encode()]
    assert found.task_payloads == 1, found
    assert found.audit == [b"export.requested"], found
    return "whole"


Attempt = Callable[..., Awaitable[tuple[CuttingProxy, str]]]


@pytest.fixture
async def attempt(
    redis: ArqRedis, settings_factory: Callable[..., Settings]
) -> AsyncIterator[Attempt]:
    """Requests an export through a :class:`CuttingProxy` cutting at a given command;
    returns the proxy and the outcome. One client and one proxy serve every attempt."""
    connectors = {"crm": MemoryConnector("crm", records={})}
    async with contextlib.AsyncExitStack() as stack:
        proxy, url = await cutting_proxy(stack)
        clients = {}
        for retries in (0, API_RETRIES):
            clients[retries] = await connect(url, retries=retries)
            stack.push_async_callback(clients[retries].aclose)
        commands = {
            retries: Commands(
                await stack.enter_async_context(
                    open_resources(settings_factory(), redis=client, connectors=connectors)
                )
            )
            for retries, client in clients.items()
        }

        async def run(cut_at: int, *, lost: bool, stay_down: bool = True) -> tuple[Any, str]:
            await redis.flushdb()
            using = commands[0 if stay_down else API_RETRIES]
            proxy.arm(cut_at, lost=lost, stay_down=stay_down)
            outcome = "created"
            try:
                await using.request_export(Actor("support-1", staff=True), subject=SUBJECT)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                outcome = f"failed: {type(exc).__name__}"
            await using.resources.audit.settle()
            proxy.disarm()
            return proxy, outcome

        yield run


async def test_an_export_is_created_whole_or_not_at_all_wherever_redis_fails(
    redis: ArqRedis, attempt: Attempt
) -> None:
    seen: set[str] = set()
    for lost in (True, False):
        cut_at = 0
        while True:
            proxy, outcome = await attempt(cut_at, lost=lost)
            state = whole_or_nothing(await stored(redis))
            seen.add(state)
            if not proxy.cut:  # the request sent fewer commands: every one has failed once
                assert outcome == "created" and state == "whole"
                break
            assert outcome.startswith("failed") or state == "whole", (cut_at, outcome)
            cut_at += 1
    assert seen == {"whole", "nothing"}


async def test_a_create_whose_answer_was_lost_is_retried_into_one_job(
    redis: ArqRedis, attempt: Attempt
) -> None:
    # The connection is cut once after the create reached Redis; the client sends it again.
    cut_at = 0
    while True:
        proxy, outcome = await attempt(cut_at, lost=False, stay_down=False)
        assert outcome == "created", (cut_at, outcome)
        assert whole_or_nothing(await stored(redis)) == "whole", cut_at
        if not proxy.cut:
            break
        cut_at += 1


SUBJECTS = [f"s-batch-{number}" for number in range(4)]


async def each_created_once(client: ArqRedis, subjects: list[str]) -> None:
    """Each subject has one export, with one ``created`` event, one acknowledgement (its
    ``notice.skipped``: no address) and its first task, queued once with its payload."""
    redis: Any = client
    queued = await redis.zrange(QUEUE_NAME, 0, -1)
    for subject in subjects:
        job_ids = await redis.zrange(f"{NS}idx:subject:{subject}", 0, -1)
        assert len(job_ids) == 1, (subject, job_ids)
        job_id = job_ids[0].decode()
        events = [f[b"type"] for _, f in await redis.xrange(f"{NS}job:{job_id}:events")]
        assert events == [b"created", b"notice.skipped"], (subject, events)
        tasks = [task for task in queued if task.startswith(f"resolve:{job_id}".encode())]
        assert len(tasks) == 1 and await redis.exists(b"arq:job:" + tasks[0]), (subject, tasks)
    assert await redis.zcard(f"{NS}idx:created") == len(subjects)
    assert await redis.hgetall(f"{NS}counts") == {b"export:queued": str(len(subjects)).encode()}


async def test_a_batch_of_creates_whose_answers_were_lost_is_sent_again_into_one_job_each(
    redis: ArqRedis, settings_factory: Callable[..., Settings]
) -> None:
    # A client that does not retry by itself: the store sends its creates once more.
    connectors = {"crm": MemoryConnector("crm", records={})}
    async with contextlib.AsyncExitStack() as stack:
        proxy, url = await cutting_proxy(stack)
        client = await connect(url, retries=0)
        stack.push_async_callback(client.aclose)
        resources = await stack.enter_async_context(
            open_resources(settings_factory(), redis=client, connectors=connectors)
        )
        commands = Commands(resources)
        await client.ping()  # connected, the script loaded: the batch alone is counted
        await client.script_load(resources.store._create.script)
        cut_at = 0
        while True:
            await redis.flushdb()
            await client.script_load(resources.store._create.script)
            proxy.arm(cut_at, lost=False, stay_down=False)
            await asyncio.gather(
                *(
                    commands.request_export(Actor("support-1", staff=True), subject=subject)
                    for subject in SUBJECTS
                )
            )
            proxy.disarm()
            await each_created_once(redis, SUBJECTS)
            if not proxy.cut:
                break
            cut_at += 1
        assert cut_at >= len(SUBJECTS)  # the creates went in one pipeline, each one cut


async def test_a_create_sent_again_answers_the_stored_job_and_writes_nothing(
    redis: ArqRedis, resources_factory: Callable[..., Any]
) -> None:
    async with resources_factory({"crm": MemoryConnector("crm", records={})}) as resources:
        job = await Commands(resources).request_export(
            Actor("support-1", staff=True), subject=SUBJECTS[0]
        )
        before = {key: await redis.type(key) for key in await redis.keys("*")}
        lengths = {key: await redis.xlen(key) for key, kind in before.items() if kind == b"stream"}
        again = job.model_copy(deep=True)
        again.requested_by = "someone-else"  # a create with the same id is not written
        stored = await resources.store.create(again, claim_active=True)
        assert stored == job and stored.requested_by == "support-1"
        assert {key: await redis.type(key) for key in await redis.keys("*")} == before
        assert {key: await redis.xlen(key) for key in lengths} == lengths
        await each_created_once(redis, SUBJECTS[:1])


async def test_creates_after_redis_lost_its_scripts_are_created_once_each(
    redis: ArqRedis, resources_factory: Callable[..., Any]
) -> None:
    async with resources_factory({"crm": MemoryConnector("crm", records={})}) as resources:
        commands = Commands(resources)
        actor = Actor("support-1", staff=True)
        first = await commands.request_export(actor, subject=SUBJECTS[0])
        await redis.script_flush()
        # A batch of creates and a read in one turn, all answered NOSCRIPT but the read.
        *_, read = await asyncio.gather(
            *(commands.request_export(actor, subject=subject) for subject in SUBJECTS[1:]),
            resources.store.get(first.id),
        )
        assert read == first
        await each_created_once(redis, SUBJECTS)


async def test_a_script_lost_again_after_loading_it_is_redis_unavailable(
    redis: ArqRedis, resources_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with resources_factory({"crm": MemoryConnector("crm", records={})}) as resources:
        store = resources.store
        load = store.redis.script_load

        async def load_then_fail_over(script: str) -> Any:  # a failover right after the load
            sha = await load(script)
            await redis.script_flush()
            return sha

        await redis.script_flush()
        monkeypatch.setattr(store.redis, "script_load", load_then_fail_over)
        with pytest.raises(REDIS_UNAVAILABLE):
            await Commands(resources).request_export(
                Actor("support-1", staff=True), subject=SUBJECTS[0]
            )
        assert await redis.keys(f"{NS}job:*") == []


async def test_a_create_whose_write_fails_queues_no_task(
    redis: ArqRedis, resources_factory: Callable[..., Any]
) -> None:
    # Lua rolls nothing back: a write that fails must come before any task is queued.
    await redis.set(f"{NS}idx:subject:{SUBJECTS[0]}", "not a sorted set")
    async with resources_factory({"crm": MemoryConnector("crm", records={})}) as resources:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await Commands(resources).request_export(
                Actor("support-1", staff=True), subject=SUBJECTS[0]
            )
    assert await redis.zcard(QUEUE_NAME) == 0
    assert await redis.keys("arq:job:*") == []
