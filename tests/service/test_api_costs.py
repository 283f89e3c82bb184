"""What an API request costs Redis, counted by a Redis server of the test's own.

A ``GET /v1/jobs/{id}`` reads the job (one ``HGETALL``) and nothing else: its token
is known by its hash after the first request, and the rate limit is counted in the
process and added to Redis in batches, not once per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from connectors.testing import MemoryConnector
from jobs.commands import Actor, Commands
from jobs.queue import connect
from jobs.resources import open_resources
from jobs.settings import Secret, Settings
from service.app import create_app
from service.auth import TokenAuthority
from tests.faults import RedisServer
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
