"""An API served over real HTTP, with a worker, on the real Redis and moto's S3 server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from arq.connections import ArqRedis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from connectors.base import Connector
from jobs.archive.signing import jwk_public_key
from jobs.archive.verify import Verification, verify_receipt_file
from jobs.resources import Resources
from jobs.settings import Secret
from jobs.worker import create_worker
from service.app import create_app
from service.auth import TokenAuthority
from tests.polling import eventually

JWT_SECRET = "test-secret-" + "x" * 40
ALICE_EMAIL = "alice@example.com"


@dataclass
class Api:
    """A running API and what a test needs to talk to it."""

    base: str
    session: ClientSession
    resources: Resources
    authority: TokenAuthority

    def token(self, sub: str = "alice", *roles: str, ttl: int = 3600) -> str:
        return self.authority.issue(sub, list(roles) or ["subject"], ttl)

    def auth(self, sub: str = "alice", *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, *roles)}"}

    def email_auth(self, sub: str = "alice", email: str = ALICE_EMAIL) -> dict[str, str]:
        """Headers with a subject token whose email claim is verified."""
        token = self.authority.issue(sub, ["subject"], 3600, email=email)
        return {"Authorization": f"Bearer {token}"}

    async def published_keys(self) -> list[Ed25519PublicKey]:
        """The signing keys ``GET /v1/keys`` publishes, as ``handover verify`` takes them."""
        _, _, keyset = await self.request("GET", "/v1/keys", sub=None)
        return [jwk_public_key(key) for key in keyset["keys"]]

    async def verified(self, receipt: Mapping[str, Any], path: Path) -> Verification:
        """``receipt`` written to ``path`` and checked with the published keys, as
        ``handover verify`` checks a receipt file."""
        keys = await self.published_keys()
        await asyncio.to_thread(path.write_bytes, orjson.dumps(receipt))
        return await asyncio.to_thread(verify_receipt_file, path, keys)

    async def archive(self, job_id: str, headers: dict[str, str]) -> zipfile.ZipFile:
        """The job's archive, downloaded the way its subject would."""
        status, answer, body = await self.request(
            "GET", f"/v1/jobs/{job_id}/download", sub=None, headers=headers
        )
        assert status == 303, body
        async with self.session.get(answer["Location"]) as response:
            assert response.status == 200
            return zipfile.ZipFile(io.BytesIO(await response.read()))

    async def request(
        self,
        method: str,
        path: str,
        *,
        sub: str | None = "alice",
        roles: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> tuple[int, dict[str, str], Any]:
        headers = dict(kwargs.pop("headers", {}))
        if sub is not None:
            headers.update(self.auth(sub, *roles))
        async with self.session.request(
            method, self.base + path, headers=headers, allow_redirects=False, **kwargs
        ) as response:
            body: Any = await response.read()
            if response.content_type in {"application/json", "application/problem+json"}:
                body = await response.json(content_type=None)
            return response.status, dict(response.headers), body

    async def export(self, sub: str = "alice", **body: Any) -> dict[str, Any]:
        status, headers, job = await self.request("POST", "/v1/exports", sub=sub, json=body)
        assert status == 202, job
        assert headers["Location"] == f"/v1/jobs/{job['id']}"
        return job  # type: ignore[no-any-return]

    async def job(
        self, job_id: str, *, sub: str = "alice", roles: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The job as its reader sees it through the API."""
        status, _, job = await self.request("GET", f"/v1/jobs/{job_id}", sub=sub, roles=roles)
        assert status == 200, job
        return job  # type: ignore[no-any-return]

    async def wait(
        self,
        job_id: str,
        *statuses: str,
        sub: str = "alice",
        roles: tuple[str, ...] = (),
        deadline: float = 30.0,
    ) -> dict[str, Any]:
        """Poll the job until it reaches one of ``statuses`` (default: any end state)."""
        wanted = set(statuses) or {"succeeded", "failed", "canceled", "expired"}
        return await eventually(
            lambda: self.job(job_id, sub=sub, roles=roles),
            until=lambda job: job["status"] in wanted,
            timeout=deadline,
            what=f"job {job_id} to be {' or '.join(sorted(wanted))}",
        )


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def api_factory(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> AsyncIterator[ApiFactory]:
    """Starts the API (and, unless told not to, a worker) with the given connectors."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            connectors: Mapping[str, Connector], *, worker: bool = True, **overrides: Any
        ) -> Api:
            overrides.setdefault("jwt_secret", Secret(JWT_SECRET))
            # Tests poll fast with one token; the limits have tests of their own.
            overrides.setdefault("rate_limit", 0)
            overrides.setdefault("subject_rate_limit", 0)
            resources = await stack.enter_async_context(resources_factory(connectors, **overrides))
            app = create_app(resources.settings, resources=resources)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            stack.push_async_callback(server.close)
            if worker:
                arq_worker = create_worker(
                    resources.settings,
                    redis=redis,
                    resources=resources,
                    poll_delay=0.01,
                    handle_signals=False,
                )
                task = asyncio.create_task(arq_worker.async_run())

                async def stop() -> None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

                stack.push_async_callback(stop)
            session = await stack.enter_async_context(ClientSession())
            return Api(
                base=str(server.make_url("")).rstrip("/"),
                session=session,
                resources=resources,
                authority=TokenAuthority(JWT_SECRET),
            )

        yield start


__all__ = ["Api", "ApiFactory", "web"]
