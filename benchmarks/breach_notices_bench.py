"""Art. 34 notices to N affected subjects (default 100,000), as ``handover serve`` runs them.

One process, like ``handover serve``: the embedded store (a redis-server of the data
dir's own, append-only, fsync'd on every write), the API over real HTTP and a worker,
notices filed in the embedded maildir. An identity source knows an address for six
subjects in seven and a language for each. The ids are uploaded to
``POST /v1/breaches/{id}/notices`` as a chunked HTTP body generated on the fly, then
the progress is polled until every line has an outcome; the delivery report is read
back whole and its lines counted.

Prints: upload time, sending time and rate, the process's peak RSS before the
upload, after it and at the end (the upload must not grow it with N), the maildir's
message count, and the report's line count. Run alone:
``.venv/bin/python benchmarks/breach_notices_bench.py [--subjects N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from connectors.items import Subject
from connectors.testing import MemoryConnector
from jobs.model import iso, utcnow
from jobs.resources import open_resources
from jobs.settings import Secret, Settings
from jobs.worker import create_worker
from service.app import create_app
from service.auth import TokenAuthority

JWT_SECRET = "bench-secret-" + "b" * 40
LOCALES = ("en", "fr", "nl", "de")


class Directory(MemoryConnector):
    """Every subject ``u<n>``: an address unless n is a multiple of 7, a language for each."""

    provides = frozenset({"email", "locale"})

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        number = int(subject.id[1:])
        found = {"locale": LOCALES[number % 4]}
        if number % 7:
            found["email"] = f"{subject.id}@example.com"
        return found


def peak_rss_mib() -> float:
    """The process's peak resident set so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def ids(count: int) -> AsyncIterator[bytes]:
    for n in range(count):
        yield f"u{n}\n".encode()


async def run(count: int, data_dir: Path) -> None:
    settings = Settings(
        data_dir=data_dir, jwt_secret=Secret(JWT_SECRET), rate_limit=0, subject_rate_limit=0
    )
    directory = Directory("directory", records={})
    async with open_resources(settings, connectors={"directory": directory}) as resources:
        app = create_app(settings, resources=resources)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        worker = create_worker(
            settings, redis=resources.redis, resources=resources, handle_signals=False
        )
        task = asyncio.create_task(worker.async_run())
        admin = TokenAuthority(JWT_SECRET).issue("bench-admin", ["admin"], 3600)
        headers = {"Authorization": f"Bearer {admin}"}
        base = str(server.make_url("")).rstrip("/")
        try:
            async with aiohttp.ClientSession(headers=headers) as http:
                facts = {
                    "aware_at": iso(utcnow() - timedelta(hours=30)),
                    "nature": "Benchmark breach",
                    "subject_categories": ["users"],
                    "record_categories": ["contact"],
                    "consequences": "None: a benchmark",
                    "measures": "None needed",
                    "dpo_contact": "dpo@example.com",
                }
                async with http.post(f"{base}/v1/breaches", json=facts) as response:
                    breach = await response.json()
                path = f"{base}/v1/breaches/{breach['id']}/notices"
                before = peak_rss_mib()
                began = time.perf_counter()
                async with http.post(
                    path, data=ids(count), headers={"Content-Type": "text/plain"}
                ) as response:
                    started = await response.json()
                    assert response.status == 202, started
                uploaded = time.perf_counter() - began
                after_upload = peak_rss_mib()
                while True:
                    async with http.get(path) as response:
                        progress = await response.json()
                    if progress["state"] == "done":
                        break
                    await asyncio.sleep(0.5)
                sent_in = time.perf_counter() - began - uploaded
                async with http.get(f"{path}/report.csv") as response:
                    lines = 0
                    async for _ in response.content:
                        lines += 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.close()
    mail = sum(1 for _ in (data_dir / "mail" / "new").iterdir())
    print(f"subjects uploaded: {count} in {uploaded:.1f} s ({count / uploaded:,.0f} lines/s)")
    print(
        f"notices: {progress['sent']} sent, {progress['no_address']} without an address, "
        f"{progress['failed']} failed, in {sent_in:.1f} s ({count / sent_in:,.0f} lines/s)"
    )
    print(
        f"peak RSS: {before:.0f} MiB before the upload, {after_upload:.0f} MiB after it, "
        f"{peak_rss_mib():.0f} MiB at the end"
    )
    print(f"maildir: {mail} messages; delivery report: {lines - 1} lines and its header")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subjects", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="handover-bench-") as folder:
        asyncio.run(run(args.subjects, Path(folder)))


if __name__ == "__main__":
    main()
