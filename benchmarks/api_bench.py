"""API: requests/s and p99 of ``GET /v1/jobs/{id}`` and ``POST /v1/exports``, beside bare aiohttp.

One ``handover api`` process (Redis database 7, S3 on moto's server, three
connectors configured, no worker: created jobs just queue) and one bare aiohttp
process (``bare_server.py``) that answers with the very bytes the API answered.
``loadgen.py`` drives each in turn from its own process: 50 keep-alive
connections, closed loop, 1 s warm-up then 3 s counted. The ``GET`` runs spread
their requests over 10,000 jobs (created first through ``Commands.request_export``,
one subject each), in a shuffled order, so no cache sees one job asked 50 times at
once; the bare server routes the same paths. The ``GET`` floor is the bare server
reading each job's record from Redis as the API does before it answers the same bytes:
what a server that reads each job it shows from Redis must spend here, beside which the
target can be judged. Runs alternate bare, Handover (and the floor), three of each; Redis is flushed
before each ``POST`` run. The server's CPU share during the run tells whether it (not
the generator) was the bottleneck.

Run alone: ``.venv/bin/python benchmarks/api_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import urllib.request
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis

from bench_connectors import install_plugin
from harness import (
    BENCH_DIR,
    JWT_SECRET,
    REDIS_URL,
    BenchmarkError,
    Process,
    ProcessGroup,
    Table,
    base_environment,
    benchmark_main,
    child_result,
    create_bucket,
    free_port,
    fresh_redis,
    median,
    redis_cpu_seconds,
    sixteen_cores,
    timer,
    verdict,
    wait_for_port,
)
from jobs.commands import Actor, Commands
from jobs.resources import open_resources
from jobs.settings import Settings
from service.auth import TokenAuthority

CONNECTIONS = 50
JOBS = 10_000  # the GET runs spread over this many jobs
SEED_CONCURRENCY = 50
WARMUP = 1.0
DURATION = 3.0
REPEATS = 3
TARGETS = {"GET": 0.40, "POST": 0.25}
FLOOR_LABEL = "GET floor: aiohttp + the record's one Redis read"
NEVER_LIMITED = 10**9  # rate limits stay on (their cost counts) but never trip
CONFIG = """\
[connectors.telemetry]
type = "synthetic"

[connectors.crm]
type = "memory"

[connectors.billing]
type = "memory"
"""


def _call(port: int, method: str, path: str, token: str, body: bytes | None) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
        return data


def load(
    server: Process,
    port: int,
    method: str,
    path: str | Path,
    headers: list[str],
    body: Path | None,
) -> dict[str, Any]:
    """One loadgen run against ``server``; its figures plus the server's CPU share.

    ``path`` is one path, or a file of paths the run spreads its requests over.
    """
    args = [
        str(BENCH_DIR / "loadgen.py"),
        f"--port={port}",
        f"--method={method}",
        f"--path-file={path}" if isinstance(path, Path) else f"--path={path}",
        f"--connections={CONNECTIONS}",
        f"--warmup={WARMUP}",
        f"--duration={DURATION}",
        *(f"--header={h}" for h in headers),
        *([f"--body-file={body}"] if body else []),
    ]
    before, redis_before = server.cpu_seconds(), redis_cpu_seconds()
    with timer() as elapsed:
        runs, _ = child_result(args, base_environment(), WARMUP + DURATION + 60)
    figures: dict[str, Any] = runs[0]
    used = server.cpu_seconds() - before
    figures["server_cpu"] = used / elapsed()
    # Per request: over the run's requests, warm-up included (at the counted rate).
    requests = figures["rps"] * (WARMUP + DURATION)
    figures["server_cpu_per_request"] = used / requests
    figures["redis_cpu_per_request"] = (redis_cpu_seconds() - redis_before) / requests
    expected = "202" if method == "POST" else "200"
    if set(figures["statuses"]) != {expected}:
        raise BenchmarkError(f"{method} {path} answered {figures['statuses']}")
    return figures


async def seed_jobs(env: dict[str, str], redis: ArqRedis, count: int) -> list[str]:
    """``count`` queued exports, one subject each, created as the API creates them."""
    async with open_resources(Settings.load(env), redis=redis) as resources:
        commands = Commands(resources)
        numbers = iter(range(count))
        ids: list[str] = []

        async def lane() -> None:
            for number in numbers:
                job = await commands.request_export(
                    Actor("support-1", staff=True), subject=f"subject-{number:05d}"
                )
                ids.append(job.id)

        await asyncio.gather(*(lane() for _ in range(SEED_CONCURRENCY)))
    random.Random(7).shuffle(ids)
    return ids


async def measure(args: argparse.Namespace, workdir: Path) -> Table:
    """Both endpoints against both servers; the table."""
    os.environ["PYTHONPATH"] = install_plugin(workdir / "plugin")  # memory, synthetic
    table = Table(
        key="api",
        title="3. API",
        intro=(
            "One `handover api` process (no worker; asyncio event loop as `handover api` "
            "runs it, access log on as the CLI configures it) against one bare aiohttp "
            f"process answering the same bytes. `loadgen.py`: {CONNECTIONS} keep-alive "
            f"connections, closed loop, {WARMUP:.0f} s warm-up + {DURATION:.0f} s counted, "
            f"medians of {REPEATS} alternating runs. HS256 JWT on every request (one support "
            f"staff token): GET spread over {JOBS:,} jobs in a shuffled order (the bare "
            "server routes the same paths), POST naming a new subject each time (one live "
            "export per subject). Rate limits on, set too high to trip; Redis flushed before "
            "each POST run. The GET floor: the bare server reading each job's record from "
            "Redis as the API does, then answering the same bytes."
        ),
        columns=[
            "endpoint",
            "Handover req/s",
            "bare req/s",
            "Handover / bare",
            "Handover p99 ms",
            "bare p99 ms",
            "server CPU: Handover / bare",
            "loadgen CPU",
            "target",
            "result",
        ],
    )
    redis = await fresh_redis()
    config = workdir / "api.toml"
    config.write_text(CONFIG)
    with ProcessGroup(workdir) as group:
        endpoint = group.start_moto()
        bucket = "handover-bench-api"
        create_bucket(endpoint, bucket)
        api_port = free_port()
        env = base_environment(
            config=str(config),
            redis_url=REDIS_URL,
            data_dir=str(workdir / "data"),
            s3_bucket=bucket,
            s3_endpoint_url=endpoint,
            jwt_secret=JWT_SECRET,
            rate_limit=str(NEVER_LIMITED),
            subject_rate_limit=str(NEVER_LIMITED),
        )
        command = [sys.executable, "-m", "service.cli", "api", f"--port={api_port}"]
        api = group.start("api", command, env)
        wait_for_port(api_port, api)
        authority = TokenAuthority(JWT_SECRET)
        staff = authority.issue("support-1", ["support"], 3600)
        with timer() as seeding:
            job_ids = await seed_jobs(env, redis, JOBS)
        job = _call(api_port, "GET", f"/v1/jobs/{job_ids[0]}", staff, None)
        created = _call(api_port, "POST", "/v1/exports", staff, b'{"subject": "load-sample"}')
        (workdir / "job.json").write_bytes(job)
        (workdir / "created.json").write_bytes(created)
        (workdir / "request.json").write_bytes(b'{"subject": "load-{n}"}')
        (workdir / "jobs.txt").write_text("".join(f"/v1/jobs/{i}\n" for i in job_ids))
        (workdir / "bare.txt").write_text("".join(f"/bare/job/{i}\n" for i in job_ids))
        (workdir / "floor.txt").write_text("".join(f"/floor/job/{i}\n" for i in job_ids))
        bare_port = free_port()
        bare = group.start(
            "bare",
            [
                sys.executable,
                str(BENCH_DIR / "bare_server.py"),
                f"--port={bare_port}",
                f"--get-body={workdir / 'job.json'}",
                f"--post-body={workdir / 'created.json'}",
                f"--redis-url={REDIS_URL}",
            ],
            base_environment(),
        )
        wait_for_port(bare_port, bare)
        auth = [f"Authorization: Bearer {staff}"]
        json_body = [f"Authorization: Bearer {staff}", "Content-Type: application/json"]
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(REPEATS):
            results.setdefault(("GET", "bare"), []).append(
                load(bare, bare_port, "GET", workdir / "bare.txt", auth, None)
            )
            results.setdefault(("GET", "handover"), []).append(
                load(api, api_port, "GET", workdir / "jobs.txt", auth, None)
            )
            results.setdefault(("GET", "floor"), []).append(
                load(bare, bare_port, "GET", workdir / "floor.txt", auth, None)
            )
        for _ in range(REPEATS):
            results.setdefault(("POST", "bare"), []).append(
                load(bare, bare_port, "POST", "/bare", json_body, workdir / "request.json")
            )
            await redis.flushdb()
            results.setdefault(("POST", "handover"), []).append(
                load(api, api_port, "POST", "/v1/exports", json_body, workdir / "request.json")
            )
    await redis.flushdb()
    await redis.aclose()
    projections = []

    def m(runs: list[dict[str, Any]], key: str) -> float:
        return median([run[key] for run in runs])

    def row(label: str, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[str]:
        """The columns up to the target: ``ours`` beside bare aiohttp's ``theirs``."""
        return [
            label,
            f"{m(ours, 'rps'):,.0f}",
            f"{m(theirs, 'rps'):,.0f}",
            f"{m(ours, 'rps') / m(theirs, 'rps'):.0%}",
            f"{m(ours, 'p99_ms'):.1f}",
            f"{m(theirs, 'p99_ms'):.1f}",
            f"{m(ours, 'server_cpu'):.0%} / {m(theirs, 'server_cpu'):.0%}",
            f"{m(ours, 'cpu_seconds') / (WARMUP + DURATION):.0%} / "
            f"{m(theirs, 'cpu_seconds') / (WARMUP + DURATION):.0%}",
        ]

    for method, label in (("GET", "GET /v1/jobs/{id}"), ("POST", "POST /v1/exports")):
        ours = results[(method, "handover")]
        theirs = results[(method, "bare")]
        per_request = {
            "API": m(ours, "server_cpu_per_request"),
            "Redis": m(ours, "redis_cpu_per_request"),
        }
        projections.append(f"{label}: " + sixteen_cores(per_request, "API", "request"))
        share = m(ours, "rps") / m(theirs, "rps")
        table.rows.append(
            [
                *row(label, ours, theirs),
                f"≥ {TARGETS[method]:.0%} of bare",
                verdict(share >= TARGETS[method]),
            ]
        )
        if method == "GET":
            table.rows.append([*row(FLOOR_LABEL, results[("GET", "floor")], theirs), "floor", ""])
    floor = results[("GET", "floor")]
    floor_share = m(floor, "rps") / m(results[("GET", "bare")], "rps")
    table.notes += [
        f"Response bodies: GET {len(job):,} bytes (a queued export over 3 connectors), "
        f"POST {len(created):,} bytes (the created job). The {JOBS:,} jobs were created "
        f"through `Commands.request_export`, {SEED_CONCURRENCY} at a time, in "
        f"{seeding():.1f} s ({JOBS / seeding():,.0f} jobs/s, the benchmark's own process).",
        "Server CPU = the server's CPU seconds over the load generator's whole run "
        "(start-up and warm-up included, so a saturated server shows a little under 100%); "
        "loadgen CPU = its own over warm-up + counted time. The machine has 2 cores, shared "
        "by server, generator, Redis (and other engineers' tests).",
        *projections,
        "The projection: CPU per request = each process's CPU seconds over the run's requests "
        "(Redis's from `INFO cpu`; another client of the same Redis adds to it); API "
        "processes scale with cores, Redis is one process (its main thread; I/O threads "
        "would lift it), load generators are elsewhere. Bare aiohttp needed "
        f"{median([r['server_cpu_per_request'] for r in results[('GET', 'bare')]]) * 1e6:,.0f} µs "
        "per GET here.",
        f"Floor: the bare server reading each job's record from Redis as the API's GET reads "
        "it (`JobStore.record`, one `HGETALL`, batched per turn of the event loop, over a "
        "client opened as the API opens its own) before answering the same bytes; no auth, "
        "view, log or middleware. It needed "
        f"{m(floor, 'server_cpu_per_request') * 1e6:,.0f} µs per GET (Redis "
        f"{m(floor, 'redis_cpu_per_request') * 1e6:,.1f}) and reached {floor_share:.0%} of "
        f"bare: {'above' if floor_share >= TARGETS['GET'] else 'below'} the GET target, "
        f"which Handover reached {m(results[('GET', 'handover')], 'rps') / m(floor, 'rps'):.0%}"
        " of.",
    ]
    return table


if __name__ == "__main__":
    benchmark_main("api", measure, __doc__ or "")
