"""Search: ``GET /v1/jobs`` with filters over 100,000 jobs, latency per query.

Seeds Redis database 7 (or ``HANDOVER_BENCH_REDIS_URL``'s) with 100,000 jobs
through ``JobStore.create`` (the code path that keeps the indexes): 120 days
of history, 25,000 subjects, three connectors each; every kind in a realistic
share (:data:`KIND_SHARES`: mostly exports and erasures, restrictions 5 %, the
other kinds rarer still); old jobs mostly ended, a few still live and so
overdue, recent ones in every state.
Then one ``handover api`` process answers each query of the table, asked by a
support token over one keep-alive connection, one request at a time (the
latency of a support user's query, no queueing). The reference is a bare aiohttp
endpoint answering the same bytes in the same run (``bare_server.py``): the
floor that HTTP and the page's size set.

Run alone: ``.venv/bin/python benchmarks/search_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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
    timer,
    verdict,
    wait_for_port,
)
from jobs.ids import new_ulid
from jobs.model import (
    ConnectorRun,
    DisclosureOptions,
    DisclosureOrder,
    ErasureOptions,
    ExportOptions,
    ExportScope,
    FieldRef,
    Job,
    JobKind,
    JobStatus,
    LiftOptions,
    ObjectionOptions,
    Options,
    RectificationOptions,
    RunStatus,
    utcnow,
)
from jobs.queue import connect
from jobs.store import JobStore
from service.auth import TokenAuthority

JOBS = 100_000
SUBJECTS = 25_000
HISTORY_DAYS = 120
DEADLINE = timedelta(days=30)
CONNECTORS = ("crm", "billing", "telemetry")
SEED_BATCH = 100
SEED_PROCESSES = 2
REPEATS = 3
WARMUP = 0.3
DURATION = 1.0
TARGET_P99_MS = 20.0
NEVER_LIMITED = 10**9  # the per-token rate limit stays on (its cost counts) but never trips
CONFIG = "".join(f'[connectors.{name}]\ntype = "memory"\n\n' for name in CONNECTORS)
QUERIES = (
    ("newest 50", {"limit": "50"}),
    ("status=running", {"status": "running", "limit": "50"}),
    ("kind=erasure & status=succeeded", {"kind": "erasure", "status": "succeeded"}),
    ("subject=user-4242", {"subject": "user-4242"}),
    ("overdue=true", {"overdue": "true", "limit": "50"}),
    ("kind=restriction & status=failed (rare)", {"kind": "restriction", "status": "failed"}),
    ("sort=due & kind=export", {"sort": "due", "kind": "export", "limit": "50"}),
    ("status=succeeded, page 2 (cursor)", {"status": "succeeded", "limit": "50"}),
)
#: Each kind's share of the seeded jobs, in %: restrictions stay rare (and their index smaller
#: than ``idx:status:failed``), so the rare query walks ~5,000 jobs of which ~6 % match.
KIND_SHARES = {
    JobKind.EXPORT: 65.0,
    JobKind.ERASURE: 23.0,
    JobKind.RESTRICTION: 5.0,
    JobKind.OBJECTION: 3.0,
    JobKind.RECTIFICATION: 3.0,
    JobKind.LIFT: 0.5,
    JobKind.DISCLOSURE: 0.5,
}
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED)
LIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.AWAITING_CONFIRMATION)


def synthetic_job(rng: random.Random, now_ms: int) -> Job:
    """One job of the seeded history."""
    age_ms = int(rng.random() ** 1.5 * HISTORY_DAYS * 86_400_000)
    created_ms = now_ms - age_ms
    job_id = new_ulid(created_ms)
    created = utcnow() - timedelta(milliseconds=age_ms)
    kind = rng.choices(list(KIND_SHARES), weights=list(KIND_SHARES.values()))[0]
    # old jobs have mostly ended, a few are stuck live (overdue past 30 days)
    old = age_ms > 2 * 86_400_000
    weights = (80, 6, 3, 10, 0.4, 0.4, 0.2) if old else (40, 5, 2, 0, 25, 20, 8)
    status = rng.choices((*ENDED, *LIVE), weights=weights)[0]
    if kind is JobKind.EXPORT and status is JobStatus.AWAITING_CONFIRMATION:
        status = JobStatus.QUEUED
    if kind is not JobKind.EXPORT and status is JobStatus.EXPIRED:
        status = JobStatus.SUCCEEDED
    run_status = {
        JobStatus.SUCCEEDED: RunStatus.SUCCEEDED,
        JobStatus.EXPIRED: RunStatus.SUCCEEDED,
        JobStatus.FAILED: RunStatus.FAILED,
        JobStatus.RUNNING: RunStatus.RUNNING,
    }.get(status, RunStatus.PENDING)
    return Job(
        id=job_id,
        kind=kind,
        subject=f"user-{rng.randrange(SUBJECTS)}",
        status=status,
        requested_by="seed",
        created_at=created,
        updated_at=created,
        due_at=created + DEADLINE,
        options=_options(kind, created),
        connectors={name: ConnectorRun(status=run_status, records=17) for name in CONNECTORS},
    )


EVERYTHING = ExportScope(connectors="all", categories="all", left_out=[])


def _options(kind: JobKind, created: datetime) -> Options:
    """A plain request of ``kind``: an export of everything, an erasure or restriction, an
    objection to direct marketing, a rectification of a contact's name, a lift, a disclosure."""
    export = ExportOptions(formats=["json"], scope=EVERYTHING)
    if kind is JobKind.EXPORT:
        return export
    if kind is JobKind.DISCLOSURE:
        order = DisclosureOrder(authority="a court", reference="R-1", legal_basis="art. 1")
        return DisclosureOptions(export=export, order=order, notice="now")
    if kind is JobKind.OBJECTION:
        return ObjectionOptions(purposes=["direct_marketing"])
    if kind is JobKind.RECTIFICATION:
        return RectificationOptions(
            changes=[FieldRef(connector="crm", dataset="contacts", field="name")]
        )
    if kind is JobKind.LIFT:
        return LiftOptions(restriction=new_ulid(), reason="verified", lifts_at=created)
    return ErasureOptions.model_validate({"kind": kind.value})


async def seed_part(part: int, now_ms: int) -> None:
    """Store this part's share of the jobs through ``JobStore.create`` (the ``seed`` child).

    ``create`` writes each job (record, indexes, counts, event) in one script call;
    ``SEED_BATCH`` calls are under way at once.
    """
    redis = await connect(REDIS_URL)
    store = JobStore(redis)
    rng = random.Random(f"9:{part}")
    count = JOBS // SEED_PROCESSES
    for start in range(0, count, SEED_BATCH):
        batch = [synthetic_job(rng, now_ms) for _ in range(min(SEED_BATCH, count - start))]
        await asyncio.gather(*(store.create(job) for job in batch))
    await redis.aclose()


def seed(workdir: Path) -> float:
    """Store ``JOBS`` jobs from ``SEED_PROCESSES`` processes; returns the seconds it took."""
    now_ms = int(utcnow().timestamp() * 1000)
    with timer() as elapsed, ProcessGroup(workdir) as group:
        parts = [
            group.start(
                f"seed-{part}",
                [sys.executable, str(Path(__file__)), "seed", str(part), str(now_ms)],
                {**base_environment(), "HANDOVER_BENCH_REDIS_URL": REDIS_URL},  # the same database
            )
            for part in range(SEED_PROCESSES)
        ]
        for part in parts:
            if part.wait(300).exit_code != 0:
                raise BenchmarkError(f"seeding failed:\n{part.log_tail()}")
    return elapsed()


def _get(port: int, path: str, token: str) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        data: bytes = response.read()
        return data


def load(port: int, paths: list[str], token: str, repeat: int) -> list[dict[str, Any]]:
    """Runs over one connection: every path, ``repeat`` times over (one loadgen process)."""
    args = [
        str(BENCH_DIR / "loadgen.py"),
        f"--port={port}",
        *(f"--path={path}" for path in paths),
        f"--repeat={repeat}",
        "--connections=1",
        f"--warmup={WARMUP}",
        f"--duration={DURATION}",
        f"--header=Authorization: Bearer {token}",
    ]
    timeout = len(paths) * repeat * (WARMUP + DURATION + 10) + 30
    runs, _ = child_result(args, base_environment(), timeout)
    for path, run in zip(paths * repeat, runs, strict=True):
        if set(run["statuses"]) != {"200"}:
            raise RuntimeError(f"GET {path} answered {run['statuses']}")
    return list(runs)


def _load_counting_cpu(
    api: Process, port: int, path: str, token: str
) -> tuple[dict[str, Any], float]:
    """One run of ``path`` alone, and the CPU seconds the API process spent meanwhile."""
    before = api.cpu_seconds()
    [run] = load(port, [path], token, 1)
    return run, api.cpu_seconds() - before


def _paths(port: int, token: str) -> list[tuple[str, str, bytes, int]]:
    """Each query's path, the bytes it answers and how many jobs they hold."""
    paths = []
    for label, params in QUERIES:
        path = "/v1/jobs?" + urllib.parse.urlencode(params)
        if "cursor" in label:
            cursor = json.loads(_get(port, path, token))["next_cursor"]
            path += "&" + urllib.parse.urlencode({"cursor": cursor})
        body = _get(port, path, token)
        paths.append((label, path, body, len(json.loads(body)["jobs"])))
    return paths


async def measure(args: argparse.Namespace, workdir: Path) -> Table:
    """Seed, then every query against the API and the bare reference; the table."""
    os.environ["PYTHONPATH"] = install_plugin(workdir / "plugin")  # memory, synthetic
    table = Table(
        key="search",
        title="5. Search",
        intro=(
            f"`GET /v1/jobs` over {JOBS:,} jobs ({HISTORY_DAYS} days, {SUBJECTS:,} subjects) "
            "seeded through `JobStore.create`; one `handover api` process, support token, "
            "one connection, one request at a time. Reference: a bare aiohttp endpoint "
            f"answering the same bytes. p99 = median over {REPEATS} runs of "
            f"{DURATION:.0f} s (after {WARMUP} s warm-up)."
        ),
        columns=[
            "query",
            "jobs in page",
            "page bytes",
            "Handover p50 ms",
            "Handover p99 ms",
            "bare p99 ms",
            "Handover req/s",
            "API CPU ms/req",
            "target",
            "result",
        ],
    )
    redis = await fresh_redis()
    seconds = seed(workdir)
    config = workdir / "search.toml"
    config.write_text(CONFIG)
    with ProcessGroup(workdir) as group:
        endpoint = group.start_moto()
        create_bucket(endpoint, "handover-bench-search")
        api_port = free_port()
        env = base_environment(
            config=str(config),
            redis_url=REDIS_URL,
            data_dir=str(workdir / "data"),
            s3_bucket="handover-bench-search",
            s3_endpoint_url=endpoint,
            jwt_secret=JWT_SECRET,
            rate_limit=str(NEVER_LIMITED),
        )
        api = group.start(
            "api", [sys.executable, "-m", "service.cli", "api", f"--port={api_port}"], env
        )
        wait_for_port(api_port, api)
        token = TokenAuthority(JWT_SECRET).issue("support-1", ["support"], 3600)
        queries = _paths(api_port, token)
        bodies = workdir / "bodies"
        bodies.mkdir()
        for number, (_, _, body, _) in enumerate(queries):
            (bodies / f"{number}.json").write_bytes(body)
        bare_port = free_port()
        bare: Process = group.start(
            "bare",
            [
                sys.executable,
                str(BENCH_DIR / "bare_server.py"),
                f"--port={bare_port}",
                *(f"--get-body={bodies / f'{n}.json'}" for n in range(len(queries))),
                f"--post-body={bodies / '0.json'}",
            ],
            base_environment(),
        )
        wait_for_port(bare_port, bare)
        paths = [path for _, path, _, _ in queries]
        ours = [
            {**run, "api_cpu_ms": cpu * 1000 / (run["rps"] * run["seconds"])}
            for _ in range(REPEATS)
            for path in paths
            for run, cpu in [_load_counting_cpu(api, api_port, path, token)]
        ]
        theirs = load(bare_port, [f"/bare/{n}" for n in range(len(queries))], token, 1)
        for number, (label, _, body, count) in enumerate(queries):
            runs = ours[number :: len(queries)]
            p99 = median([run["p99_ms"] for run in runs])
            table.rows.append(
                [
                    label,
                    str(count),
                    f"{len(body):,}",
                    f"{median([run['p50_ms'] for run in runs]):.1f}",
                    f"{p99:.1f}",
                    f"{theirs[number]['p99_ms']:.1f}",
                    f"{median([run['rps'] for run in runs]):,.0f}",
                    f"{median([run['api_cpu_ms'] for run in runs]):.1f}",
                    f"p99 < {TARGET_P99_MS:.0f} ms",
                    verdict(p99 < TARGET_P99_MS),
                ]
            )
    await redis.flushdb()
    await redis.aclose()
    table.notes.append(
        f"Seeding {JOBS:,} jobs through `JobStore.create` ({SEED_BATCH:,} at once, "
        f"{SEED_PROCESSES} processes) "
        f"took {seconds:.0f} s ({JOBS / seconds:,.0f} jobs/s). Query parameters as "
        "documented in /openapi.json (`kind`, `status`, `subject`, `overdue`, `sort`, "
        "`limit`, `cursor`); `limit` defaults to 50."
    )
    table.notes.append(
        "API CPU ms/req: the API process's CPU seconds over its load generator's whole run "
        "(warm-up included) over the requests that run would answer at the counted rate; "
        "independent of the other work on the machine, unlike the latencies."
    )
    return table


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "seed":
        asyncio.run(seed_part(int(sys.argv[2]), int(sys.argv[3])))
    else:
        benchmark_main("search", measure, __doc__ or "")
