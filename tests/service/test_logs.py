"""No personal data and no secrets in Handover's logs: a full export and erasure, scanned."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, web
from aiohttp.log import access_logger
from aiohttp.test_utils import make_mocked_request

from service import logs
from service.accesslog import AccessLogger
from service.logs import redact
from tests.conftest import free_port, wait_for_port
from tests.faults import HandoverProcess
from tests.polling import eventually
from tests.service.test_processes import clean_env

SUBJECT = "s-4f2a91c7"
EMAIL = "s4f2a91c7@example.org"


def test_redaction_removes_tokens_and_signatures() -> None:
    line = (
        "GET /v1/objects/x.zip?expires=1&signature=abcdef0123 "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig "
        "and X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA/x"
    )
    clean = redact(line + " POST /hook?token=t0p-secret for sam.o'brien+x@mail.example.org")
    assert "abcdef0123" not in clean and "deadbeef" not in clean and "eyJzdWIi" not in clean
    assert "AKIA" not in clean and "t0p-secret" not in clean and "mail.example" not in clean
    assert "signature=[redacted]" in clean and "token=[redacted]" in clean


async def wait_for(
    session: ClientSession, url: str, headers: dict[str, str], status: str
) -> dict[str, object]:
    async def current() -> dict[str, object]:
        async with session.get(url, headers=headers) as response:
            job: dict[str, object] = await response.json()
        assert job["status"] == status or job["status"] not in {"failed", "canceled"}, job
        return job

    return await eventually(
        current, until=lambda job: job["status"] == status, timeout=60, what=f"{url} to be {status}"
    )


async def test_a_full_export_and_erasure_log_nothing_personal(tmp_path: Path) -> None:
    config = tmp_path / "handover.toml"
    config.write_text(
        "[connectors.crm]\n"
        'type = "memory"\n'
        f"[connectors.crm.records.{SUBJECT}]\n"
        f'contacts = [{{id = 1, email = "{EMAIL}", name = "Sam"}}]\n'
    )
    port = free_port()
    env = clean_env(HANDOVER_DATA_DIR=str(tmp_path / "data"), HANDOVER_CONFIG=str(config))
    log = tmp_path / "serve.log"
    serve = HandoverProcess(env, log, ("serve", "--port", str(port)), logs_only=True)
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        minted = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service.cli", "token", "--sub", SUBJECT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = minted.stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        async with ClientSession() as session:
            async with session.post(f"{base}/v1/exports", json={}, headers=headers) as response:
                export = await response.json()
            await wait_for(session, f"{base}/v1/jobs/{export['id']}", headers, "succeeded")
            async with session.get(
                f"{base}/v1/jobs/{export['id']}/download", headers=headers
            ) as response:
                assert EMAIL.encode() in await response.read() or response.status == 200
            async with session.post(
                f"{base}/v1/erasures", json={"reason": f"I am {EMAIL}"}, headers=headers
            ) as response:
                erasure = await response.json()
            async with session.post(
                f"{base}/v1/jobs/{erasure['id']}/confirm", headers=headers
            ) as response:
                assert response.status == 200
            await wait_for(session, f"{base}/v1/jobs/{erasure['id']}", headers, "succeeded")
            async with session.get(
                f"{base}/v1/jobs/{erasure['id']}/receipt", headers=headers
            ) as response:
                assert response.status == 200
            async with session.get(
                f"{base}/v1/jobs?subject={SUBJECT}", headers=headers
            ) as response:
                assert response.status == 200
        # Malformed requests carrying the subject's email in their request line.
        for raw in (
            f"GET /v1/jobs?email={EMAIL} HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            f"GET /v1/jobs/\x01{EMAIL} HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw.encode())
            assert (await reader.read(12)) == b"HTTP/1.0 400"
            writer.close()
    finally:
        serve.terminate()
    lines = log.read_text().splitlines()
    assert len(lines) > 10
    for line in lines:
        record = orjson.loads(line)  # every line is one JSON object
        assert "event" in record and "level" in record
    text = log.read_text()
    assert SUBJECT not in text
    assert EMAIL not in text
    assert token not in text and token.split(".")[1] not in text
    assert not re.search(r"signature=[0-9a-f]{16}", text)
    assert '"route": "/v1/jobs/{job_id}"' in text  # the access log names routes, not paths
    assert text.count("malformed request refused") == 2 and "Traceback" not in text


async def test_access_lines_are_written_directly_with_the_fields_structlog_would_write() -> None:
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure(logging.INFO, stream)
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=202)

    app.router.add_post("/v1/jobs/{job_id}/confirm", handler)
    request = make_mocked_request("POST", "/v1/jobs/01HX/confirm?token=secret", app=app)
    match_info = await app.router.resolve(request)
    match_info.add_app(app)
    request._match_info = match_info
    response = web.Response(status=202)
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(record := factory(*args, **kwargs))
        return record

    logging.setLogRecordFactory(counted)
    try:
        access = AccessLogger(access_logger, "")
        access.log(request, response, 0.012345)
        assert made == []  # written straight to the stream: no record, no processor chain
        # The same line through logging and structlog, as a test's log capture would get it.
        access_logger.addFilter(lambda record: True)
        access.log(request, response, 0.012345)
        assert made
    finally:
        logging.setLogRecordFactory(factory)
        access_logger.filters.clear()
        root.handlers[:], root.level = kept
    direct, rendered = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert list(direct) == list(rendered)  # the same fields in the same order
    assert direct.pop("timestamp") <= rendered.pop("timestamp")
    assert (
        direct
        == rendered
        == {
            "event": "request",
            "level": "info",
            "logger": "aiohttp.access",
            "method": "POST",
            "route": "/v1/jobs/{job_id}/confirm",
            "status": 202,
            "seconds": 0.0123,
        }
    )
