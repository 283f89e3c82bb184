"""The command lines the README and the container image run, run here as real processes.

- ``handover serve`` on embedded defaults (what ``make demo`` runs): one process,
  no Redis, no S3; a subject exports, downloads through the API's signed link and
  verifies the archive.
- ``handover api`` + ``handover worker`` on Redis and S3 (what docker-compose runs).
- ``handover serve`` killed (SIGKILL) and stopped (SIGTERM), then started again on the
  same data dir: a finished export, an erasure awaiting confirmation and one confirmed
  in its grace period are all still there, the erasure runs when its grace ends, and
  the archive still downloads. A store server an earlier run left behind is stopped.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs.archive.signing import jwk_public_key
from jobs.archive.verify import verify_archive
from jobs.embedded import StoreFiles, redis_server
from jobs.settings import Settings
from service.app import jwt_secret
from service.auth import TokenAuthority
from tests.conftest import REDIS_URL, free_port, wait_for_port
from tests.polling import eventually

JWT = "process-test-secret-" + "q" * 40


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.popen.terminate()
        code = self.popen.wait(timeout=30)
        self.handle.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is, with no chance to clean up."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)
        self.handle.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.stop()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env.update(extra)
    return env


async def export_download_verify(base: str, token: str, tmp_path: Path) -> Path:
    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession() as session:
        async with session.post(f"{base}/v1/exports", json={}, headers=headers) as response:
            assert response.status == 202, await response.text()
            job = await response.json()

        async def current() -> dict[str, Any]:
            async with session.get(f"{base}/v1/jobs/{job['id']}", headers=headers) as response:
                answer: dict[str, Any] = await response.json()
                return answer

        job = await eventually(
            current,
            until=lambda job: job["status"] in {"succeeded", "failed"},
            timeout=60,
            what=f"export {job['id']} to end",
        )
        assert job["status"] == "succeeded", job
    return await download_verified(base, token, job["id"], tmp_path)


async def download_verified(base: str, token: str, job_id: str, tmp_path: Path) -> Path:
    """The job's archive, downloaded through the API's link and verified against /v1/keys."""
    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession() as session:
        async with session.get(f"{base}/v1/jobs/{job_id}/download", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Disposition"].startswith("attachment")
            archive = tmp_path / "export.zip"
            archive.write_bytes(await response.read())
        async with session.get(f"{base}/v1/keys") as response:
            keys = [jwk_public_key(k) for k in (await response.json())["keys"]]
    result = verify_archive(archive, keys)
    assert result.ok, result.problems
    return archive


async def test_serve_on_embedded_defaults(tmp_path: Path, processes: list[Process]) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    env = clean_env(HANDOVER_DATA_DIR=str(data_dir))
    serve = Process(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    processes.append(serve)
    await asyncio.to_thread(wait_for_port, port, 30)
    banner = await eventually(
        serve.output,
        until=lambda output: "Subject token" in output,
        timeout=10,
        what="the serve banner's subject token",
    )
    token = re.search(r"Subject token \(alice, 24 h\):\s+(\S+)", banner)
    assert token, banner
    assert f"curl -si -X POST http://127.0.0.1:{port}/v1/exports" in banner
    archive = await export_download_verify(f"http://127.0.0.1:{port}", token.group(1), tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    assert {"profile/profile.json", "devices/telemetry.json", "billing/invoices.json"} <= set(names)
    # Everything kept in the data dir (archives, the demo database, the store, keys) is
    # readable by Handover's own user only.
    kept = [data_dir, *data_dir.rglob("*")]
    assert any(path.suffix == ".zip" for path in kept)
    exposed = [
        f"{path}: {path.stat().st_mode & 0o777:o}" for path in kept if path.stat().st_mode & 0o077
    ]
    assert exposed == []

    # A tampered download link is refused.
    async with ClientSession() as session:
        link = f"http://127.0.0.1:{port}/v1/objects/x.zip?expires=9999999999&filename=x.zip&signature=00"
        async with session.get(link) as response:
            assert response.status == 403
    assert serve.stop() == 0

    # The secret and keys survive a restart: the old token still works.
    restarted = Process(["serve", "--port", str(port)], env, tmp_path / "serve2.log")
    processes.append(restarted)
    await asyncio.to_thread(wait_for_port, port, 30)
    async with ClientSession() as session:
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        async with session.get(
            f"http://127.0.0.1:{port}/v1/connectors", headers=headers
        ) as response:
            assert response.status == 200


async def test_api_and_worker_processes_on_redis_and_s3(
    tmp_path: Path, processes: list[Process], s3_endpoint: str, bucket: str
) -> None:
    port = free_port()
    env = clean_env(
        HANDOVER_REDIS_URL=REDIS_URL,
        HANDOVER_S3_BUCKET=bucket,
        HANDOVER_S3_ENDPOINT_URL=s3_endpoint,
        HANDOVER_JWT_SECRET=JWT,
        HANDOVER_DATA_DIR=str(tmp_path / "shared"),
    )
    processes.append(Process(["api", "--port", str(port)], env, tmp_path / "api.log"))
    processes.append(Process(["worker"], env, tmp_path / "worker.log"))
    await asyncio.to_thread(wait_for_port, port, 30)
    minted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service.cli", "token", "--sub", "alice"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = minted.stdout.strip()
    await export_download_verify(f"http://127.0.0.1:{port}", token, tmp_path)
    for process in processes:
        assert process.stop() == 0, process.output()[-2000:]


class Demo:
    """A ``handover serve`` on embedded defaults over one data dir, and its subjects' tokens."""

    def __init__(self, tmp_path: Path, processes: list[Process], **env: str) -> None:
        self.tmp_path = tmp_path
        self.processes = processes
        self.data_dir = tmp_path / "data"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # No rate limit: the test polls its jobs faster than any subject may.
        self.env = clean_env(HANDOVER_DATA_DIR=str(self.data_dir), HANDOVER_RATE_LIMIT="0", **env)
        self.serve: Process | None = None

    async def start(self) -> Process:
        log = self.tmp_path / f"serve-{len(self.processes)}.log"
        self.serve = Process(["serve", "--port", str(self.port)], self.env, log)
        self.processes.append(self.serve)
        await asyncio.to_thread(wait_for_port, self.port, 30)
        return self.serve

    def token(self, sub: str) -> str:
        settings = Settings(data_dir=self.data_dir)
        return TokenAuthority.from_settings(settings, jwt_secret(settings)).issue(sub, ["subject"])

    async def call(self, method: str, path: str, sub: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token(sub)}"}
        async with (
            ClientSession() as session,
            session.request(method, self.base + path, headers=headers, json={}) as response,
        ):
            return response.status, await response.json(content_type=None)

    async def job(self, job_id: str, sub: str) -> dict[str, Any]:
        status, job = await self.call("GET", f"/v1/jobs/{job_id}", sub)
        assert status == 200, job
        answer: dict[str, Any] = job
        return answer

    async def until(self, job_id: str, sub: str, status: str) -> dict[str, Any]:
        return await eventually(
            lambda: self.job(job_id, sub),
            until=lambda job: job["status"] == status,
            timeout=60,
            interval=0.1,
            what=f"job {job_id} to be {status}",
        )

    def store_pid(self) -> int:
        return int(StoreFiles(self.data_dir).pidfile.read_text())


def start_store_server(files: StoreFiles) -> subprocess.Popen[bytes]:
    """A redis-server on the store's own configuration, as a dead owner would leave it."""
    return subprocess.Popen(
        [str(redis_server()), str(files.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_serve_keeps_every_request_across_sigkill_and_sigterm(
    tmp_path: Path, processes: list[Process]
) -> None:
    grace = 10
    demo = Demo(tmp_path, processes, HANDOVER_ERASURE_GRACE=f"{grace}s")
    await demo.start()
    status, export = await demo.call("POST", "/v1/exports", "alice")
    assert status == 202, export
    await demo.until(export["id"], "alice", "succeeded")
    status, pending = await demo.call("POST", "/v1/erasures", "bob")
    assert status == 202 and pending["status"] == "awaiting_confirmation", pending
    status, confirmed = await demo.call("POST", "/v1/erasures", "carol")
    assert status == 202, confirmed
    status, confirmed = await demo.call("POST", f"/v1/jobs/{confirmed['id']}/confirm", "carol")
    assert status == 200 and confirmed["status"] == "queued", confirmed
    not_before = datetime.fromisoformat(confirmed["not_before"]).timestamp()

    async def all_three_kept() -> None:
        assert (await demo.job(export["id"], "alice"))["status"] == "succeeded"
        assert (await demo.job(pending["id"], "bob"))["status"] == "awaiting_confirmation"
        erasure = await demo.job(confirmed["id"], "carol")
        if time.time() < not_before - 1:  # still in its grace period, as a slow machine may not be
            assert erasure["status"] == "queued" and erasure["not_before"], erasure
        assert erasure["status"] not in {"failed", "canceled"}, erasure

    server = demo.store_pid()
    assert demo.serve is not None
    demo.serve.kill()
    # The store's server dies with its owner: nothing holds the data dir any more.
    await eventually(
        lambda: alive(server), until=lambda running: not running, timeout=10, what="Redis to end"
    )
    await demo.start()
    await all_three_kept()
    async with ClientSession() as session:

        async def readiness() -> tuple[int, Any]:
            async with session.get(f"{demo.base}/readyz") as response:
                return response.status, await response.json()

        await eventually(
            readiness,
            until=lambda answer: answer[0] == 200,
            timeout=45,
            what="/readyz to answer 200 on the embedded store",
        )

    assert demo.serve.stop() == 0
    await demo.start()
    await all_three_kept()
    await download_verified(demo.base, demo.token("alice"), export["id"], tmp_path)
    done = await demo.until(confirmed["id"], "carol", "succeeded")
    assert datetime.fromisoformat(done["updated_at"]).timestamp() >= not_before
    assert time.time() - not_before < grace + 60, "the erasure ran long after its grace ended"


async def test_serve_stops_a_store_server_an_earlier_run_left_running(
    tmp_path: Path, processes: list[Process]
) -> None:
    demo = Demo(tmp_path, processes)
    serve = await demo.start()
    status, export = await demo.call("POST", "/v1/exports", "alice")
    assert status == 202, export
    await demo.until(export["id"], "alice", "succeeded")
    assert serve.stop() == 0
    # What a SIGKILL leaves where the server does not die with its owner: the server
    # still running on the data dir's files and socket, its owner gone.
    files = StoreFiles(demo.data_dir)
    leftover = start_store_server(files)
    try:
        client = Redis(unix_socket_path=str(files.socket))
        await eventually(
            client.ping,
            timeout=10,
            what="the left-over server to answer",
            ignoring=(RedisConnectionError,),
        )
        await client.aclose()
        await demo.start()
        assert (await demo.job(export["id"], "alice"))["status"] == "succeeded"
        # Asked to shut down, it flushed its data and ended with 0.
        assert await asyncio.to_thread(leftover.wait, 10) == 0
        assert demo.store_pid() != leftover.pid
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
