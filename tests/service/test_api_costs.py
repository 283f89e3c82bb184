"""What an API request costs Redis, counted by a Redis server of the test's own.

A ``GET /v1/jobs/{id}`` reads the job (one ``HGETALL``) and nothing else: its token
is known by its hash after the first request, and the rate limit is counted in the
process and added to Redis in batches, not once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from arq.jobs import serialize_job

from connectors.testing import MemoryConnector
from jobs.commands import Actor, Commands
from jobs.model import Job
from jobs.notices import NOTICE_TASK
from jobs.queue import QUEUE_NAME, connect
from jobs.resources import Resources, open_resources
from jobs.settings import Secret, Settings
from jobs.worker import create_worker
from service.app import create_app
from service.auth import TokenAuthority
from tests.faults import RedisServer
from tests.mailserver import mail_server
from tests.polling import eventually

SECRET = "costs-test-secret-" + "c" * 40
GETS = 20


def calls(info: dict[str, Any], command: str) -> int:
    """How many times the server ran ``command`` since its statistics were reset."""
    return int(info.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_get_of_a_job_is_one_redis_command(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        redis: Any = await connect(server.url)
        settings = settings_factory(jwt_secret=Secret(SECRET), rate_limit=10**6)
        connectors = {"crm": MemoryConnector("crm", records={})}
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(redis.aclose)
            resources = await stack.enter_async_context(
                open_resources(settings, redis=redis, connectors=connectors)
            )
            job = await Commands(resources).request_export(
                Actor("support-1", staff=True), subject="s-1"
            )
            app = TestServer(create_app(settings, resources=resources), host="127.0.0.1")
            await app.start_server()
            stack.push_async_callback(app.close)
            session = await stack.enter_async_context(ClientSession())
            token = TokenAuthority(SECRET).issue("support-1", ["support"])
            await resources.audit.settle()
            await redis.config_resetstat()
            url = str(app.make_url(f"/v1/jobs/{job.id}"))
            for _ in range(GETS):
                async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as got:
                    assert got.status == 200
            info = await redis.info("commandstats")
            assert calls(info, "hgetall") == GETS
            # The rate limit's counts reach Redis in a batch or two, not one per request.
            counted = await eventually(
                lambda: redis.info("commandstats"),
                until=lambda now: calls(now, "incrby") >= 1,
                timeout=5,
                what="the rate limit's counts to be added",
            )
            assert calls(counted, "incrby") + calls(counted, "incr") < GETS // 2
    finally:
        server.stop()


POSTS = 5
#: What the acknowledgement sent after the create script (a watched transaction and an
#: event), and must no longer; nothing in the background sends these either.
AFTER_THE_SCRIPT = {"WATCH", "HGET", "HSET", "SET", "XADD", "ZADD"}


@dataclass
class ExportsApi:
    """An API on a Redis server of the test's own, and what it takes to post exports."""

    redis: Any
    resources: Resources
    session: ClientSession
    url: str
    headers: dict[str, str]

    async def sent_while_posting(
        self, first: dict[str, Any], bodies: list[dict[str, Any]]
    ) -> list[list[str]]:
        """The commands the API sent Redis (as their words) while ``bodies`` were posted,
        after ``first``, which loads the create script: the steady state is measured."""
        post = functools.partial(self.session.post, self.url, headers=self.headers)
        async with post(json=first) as loading:
            assert loading.status == 202
        seen: list[tuple[str, str]] = []
        async with self.redis.monitor() as monitor:

            async def watch() -> None:
                while True:
                    command = await monitor.next_command()
                    seen.append((command["client_type"], command["command"]))

            watching = asyncio.create_task(watch())
            for body in bodies:
                async with post(json=body) as created:
                    assert created.status == 202
            await self.redis.set("test:end", "1")
            await eventually(
                lambda: asyncio.sleep(0, seen),
                until=lambda now: any(c.startswith("SET test:end") for _, c in now),
                timeout=5,
                what="the monitor to see the last command",
            )
            watching.cancel()
        return [
            command.split(" ")
            for kind, command in seen
            if kind != "lua" and not command.startswith("SET test:end")
        ]

    async def job_of(self, subject: str) -> Job:
        job_id = (await self.redis.zrange(f"handover:idx:subject:{subject}", 0, -1))[0]
        return await self.resources.store.get(job_id.decode())


@contextlib.asynccontextmanager
async def exports_api(tmp_path: Path, settings: Settings) -> AsyncIterator[ExportsApi]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        redis: Any = await connect(server.url)
        connectors = {"crm": MemoryConnector("crm", records={})}
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(redis.aclose)
            resources = await stack.enter_async_context(
                open_resources(settings, redis=redis, connectors=connectors)
            )
            app = TestServer(create_app(settings, resources=resources), host="127.0.0.1")
            await app.start_server()
            stack.push_async_callback(app.close)
            session = await stack.enter_async_context(ClientSession())
            token = TokenAuthority(SECRET).issue("support-1", ["support"])
            headers = {"Authorization": f"Bearer {token}"}
            yield ExportsApi(redis, resources, session, str(app.make_url("/v1/exports")), headers)
    finally:
        server.stop()


def script_only(api: ExportsApi, sent: list[list[str]]) -> None:
    """Each export was one create script, and nothing was sent after it."""
    create = api.resources.store._create.sha
    assert sum(1 for words in sent if words[:2] == ["EVALSHA", create]) == POSTS
    assert not [words for words in sent if words[0] in AFTER_THE_SCRIPT]


async def test_a_new_export_is_one_redis_command_its_acknowledgement_included(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(
        jwt_secret=Secret(SECRET), rate_limit=10**6, subject_rate_limit=10**6
    )
    async with exports_api(tmp_path, settings) as api:
        subjects = [f"s-{number}" for number in range(POSTS)]
        bodies = [{"subject": subject} for subject in subjects]
        script_only(api, await api.sent_while_posting({"subject": "first"}, bodies))
        # And the acknowledgement (skipped: no address) was recorded, by the script, once each.
        for subject in subjects:
            events = await api.resources.store.events((await api.job_of(subject)).id)
            assert [e.type for e in events] == ["created", "notice.skipped"]


async def test_a_new_export_with_its_acknowledgement_queued_is_one_redis_command(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    with mail_server() as (inbox, port):
        settings = settings_factory(
            jwt_secret=Secret(SECRET),
            rate_limit=10**6,
            subject_rate_limit=10**6,
            smtp_url=f"smtp://127.0.0.1:{port}",
            mail_from="Platform privacy <privacy@platform.example>",
            privacy_url="https://platform.example/privacy",
        )
        async with exports_api(tmp_path, settings) as api:
            redis = api.redis
            subjects = [f"s-{number}" for number in range(POSTS)]

            def body(subject: str) -> dict[str, Any]:
                email = f"{subject}@example.com"
                verified = {"email": email, "verified_by": "ID card at the desk"}
                return {"subject": subject, "identifiers": verified}

            bodies = [body(subject) for subject in subjects]
            script_only(api, await api.sent_while_posting(body("first"), bodies))
            jobs = {}
            for subject in subjects:
                jobs[subject] = job = await api.job_of(subject)
                # The acknowledgement's state, letter and task, as notify_subject stores them.
                key = f"handover:notice:{job.id}:acknowledged:{job.generation}"
                assert await redis.hgetall(key) == {b"state": b"queued", b"language": b"en"}
                letter = orjson.loads(await redis.get(f"{key}:letter"))
                assert letter == {"to": f"{subject}@example.com", "details": {}}
                task_id = f"notice:{job.id}:acknowledged:{job.generation}"
                assert await redis.zscore(QUEUE_NAME, task_id) is not None
                # The payload is what enqueue_job writes (at the moment the script queued it).
                payload = await redis.get(f"arq:job:{task_id}")
                args = (job.id, "acknowledged", job.generation, "")
                enqueued_ms = orjson.loads(payload)["et"]
                serializer = redis.job_serializer
                assert payload == serialize_job(
                    NOTICE_TASK, args, {}, None, enqueued_ms, serializer=serializer
                )
                assert await redis.pttl(f"arq:job:{task_id}") > 0
                # arq knows it for its own: enqueueing the same task again queues nothing.
                again = await redis.enqueue_job(
                    NOTICE_TASK, job.id, "acknowledged", job.generation, "", _job_id=task_id
                )
                assert again is None
            worker = create_worker(
                settings,
                redis=redis,
                resources=api.resources,
                burst=True,
                poll_delay=0,
                handle_signals=False,
            )
            await worker.main()
            assert worker.jobs_failed == 0
            acknowledged = inbox.about("acknowledged")
            assert sorted(r.recipients[0] for r in acknowledged) == sorted(
                f"{s}@example.com" for s in ["first", *subjects]
            )
            for job in jobs.values():
                events = await api.resources.store.events(job.id)
                sent_notices = [e.data["notice"] for e in events if e.type == "notice.sent"]
                assert sent_notices.count("acknowledged") == 1, events
