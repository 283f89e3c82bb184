"""The command lines the README and the container image run, run here as real processes.

- ``handover serve`` on embedded defaults (what ``make demo`` runs): one process,
  no Redis, no S3; a subject exports, downloads through the API's signed link and
  verifies the archive.
- ``handover api`` + ``handover worker`` on Redis and S3 (what docker-compose runs).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from jobs.archive.signing import jwk_public_key
from jobs.archive.verify import verify_archive
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
        async with session.get(f"{base}/v1/jobs/{job['id']}/download", headers=headers) as response:
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
