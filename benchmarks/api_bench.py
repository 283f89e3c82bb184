"""API: requests/s and p99 of ``GET /v1/jobs/{id}`` and ``POST /v1/exports``, beside bare aiohttp.

One ``handover api`` process (Redis database 7, S3 on moto's server, three
connectors configured, no worker: created jobs just queue) and one bare aiohttp
process (``bare_server.py``) that answers with the very bytes the API answered.
``loadgen.py`` drives each in turn from its own process: 50 keep-alive
connections, closed loop, 1 s warm-up then 5 s counted. Runs alternate bare and
Handover, three of each; Redis is flushed before each ``POST`` run. The server's
CPU share during the run tells whether it (not the generator) was the bottleneck.

Run alone: ``.venv/bin/python benchmarks/api_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from bench_connectors import install_plugin
from harness import (
    BENCH_DIR,
    JWT_SECRET,
    REDIS_URL,
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
    timer,
    verdict,
    wait_for_port,
)
from service.auth import TokenAuthority

CONNECTIONS = 50
WARMUP = 1.0
DURATION = 3.0
REPEATS = 3
TARGETS = {"GET": 0.40, "POST": 0.25}
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
    server: Process, port: int, method: str, path: str, headers: list[str], body: Path | None
) -> dict[str, Any]:
    """One loadgen run against ``server``; its figures plus the server's CPU share."""
    args = [
        str(BENCH_DIR / "loadgen.py"),
        f"--port={port}",
        f"--method={method}",
        f"--path={path}",
        f"--connections={CONNECTIONS}",
        f"--warmup={WARMUP}",
        f"--duration={DURATION}",
        *(f"--header={h}" for h in headers),
        *([f"--body-file={body}"] if body else []),
    ]
    before = server.cpu_seconds()
    with timer() as elapsed:
        runs, _ = child_result(args, base_environment(), WARMUP + DURATION + 60)
    figures: dict[str, Any] = runs[0]
    figures["server_cpu"] = (server.cpu_seconds() - before) / elapsed()
    expected = "202" if method == "POST" else "200"
    if set(figures["statuses"]) != {expected}:
        raise RuntimeError(f"{method} {path} answered {figures['statuses']}")
    return figures


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
            f"medians of {REPEATS} alternating runs. HS256 JWT on every request: GET by the "
            "subject, POST by support staff naming a new subject each time (one live export "
            "per subject). Rate limits on, set too high to trip; Redis flushed before each "
            "POST run."
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
        token = authority.issue("alice", ["subject"], 3600)
        staff = authority.issue("support-1", ["support"], 3600)
        job_id = json.loads(_call(api_port, "POST", "/v1/exports", token, b"{}"))["id"]
        job = _call(api_port, "GET", f"/v1/jobs/{job_id}", token, None)
        created = _call(api_port, "POST", "/v1/exports", staff, b'{"subject": "load-sample"}')
        (workdir / "job.json").write_bytes(job)
        (workdir / "created.json").write_bytes(created)
        (workdir / "request.json").write_bytes(b'{"subject": "load-{n}"}')
        bare_port = free_port()
        bare = group.start(
            "bare",
            [
                sys.executable,
                str(BENCH_DIR / "bare_server.py"),
                f"--port={bare_port}",
                f"--get-body={workdir / 'job.json'}",
                f"--post-body={workdir / 'created.json'}",
            ],
            base_environment(),
        )
        wait_for_port(bare_port, bare)
        auth = [f"Authorization: Bearer {token}"]
        json_body = [f"Authorization: Bearer {staff}", "Content-Type: application/json"]
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(REPEATS):
            results.setdefault(("GET", "bare"), []).append(
                load(bare, bare_port, "GET", "/bare", auth, None)
            )
            results.setdefault(("GET", "handover"), []).append(
                load(api, api_port, "GET", f"/v1/jobs/{job_id}", auth, None)
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
    for method, label in (("GET", "GET /v1/jobs/{id}"), ("POST", "POST /v1/exports")):
        ours = results[(method, "handover")]
        theirs = results[(method, "bare")]

        def m(runs: list[dict[str, Any]], key: str) -> float:
            return median([run[key] for run in runs])

        share = m(ours, "rps") / m(theirs, "rps")
        table.rows.append(
            [
                label,
                f"{m(ours, 'rps'):,.0f}",
                f"{m(theirs, 'rps'):,.0f}",
                f"{share:.0%}",
                f"{m(ours, 'p99_ms'):.1f}",
                f"{m(theirs, 'p99_ms'):.1f}",
                f"{m(ours, 'server_cpu'):.0%} / {m(theirs, 'server_cpu'):.0%}",
                f"{m(ours, 'cpu_seconds') / (WARMUP + DURATION):.0%} / "
                f"{m(theirs, 'cpu_seconds') / (WARMUP + DURATION):.0%}",
                f"≥ {TARGETS[method]:.0%} of bare",
                verdict(share >= TARGETS[method]),
            ]
        )
    table.notes += [
        f"Response bodies: GET {len(job):,} bytes (a queued export over 3 connectors), "
        f"POST {len(created):,} bytes (the created job).",
        "Server CPU = the server's CPU seconds over the load generator's whole run "
        "(start-up and warm-up included, so a saturated server shows a little under 100%); "
        "loadgen CPU = its own over warm-up + counted time. The machine has 2 cores, shared "
        "by server, generator, Redis (and other engineers' tests).",
    ]
    return table


if __name__ == "__main__":
    benchmark_main("api", measure, __doc__ or "")
