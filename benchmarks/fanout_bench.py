"""Fan-out: one export over 10 and 50 connectors that each take 1 s to answer.

Each connector is ``bench-sleepy`` (``bench_connectors``, registered as a plugin):
it waits 1 s, then yields three records. The job runs on ``handover worker``
processes started beforehand (moto's S3 server for storage), with the worker
concurrency (``HANDOVER_WORKER_CONCURRENCY``) and number of processes of each
row. The figure is the job's wall time from ``created_at`` to ``succeeded``;
the ideal is 1 s plus the time to bundle the archive.

Run alone: ``.venv/bin/python benchmarks/fanout_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path

from arq.connections import ArqRedis

from bench_connectors import install_plugin
from harness import (
    REDIS_URL,
    BenchmarkError,
    ProcessGroup,
    Table,
    base_environment,
    benchmark_main,
    create_bucket,
    fresh_redis,
    median,
    start_worker,
    verdict,
    wait_until,
)
from jobs.commands import Actor, Commands
from jobs.model import Job, JobStatus
from jobs.resources import Resources, open_resources
from jobs.settings import Settings

SECONDS = 1.0
REPEATS = 3
TARGETS = {10: 1.5, 50: 3.0}


@dataclass(frozen=True)
class Setup:
    """How many connectors, worker processes and jobs per process (worker concurrency)."""

    connectors: int
    processes: int
    concurrency: int


SETUPS = (
    Setup(10, 1, 10),
    Setup(50, 1, 10),
    Setup(50, 1, 50),
    Setup(50, 5, 10),
)


@dataclass(frozen=True)
class FanOutRun:
    """One job's timings, in seconds."""

    total: float
    first_start: float
    connectors: float
    bundle: float


def _timings(job: Job) -> FanOutRun:
    starts = [run.started_at for run in job.connectors.values() if run.started_at]
    ends = [run.finished_at for run in job.connectors.values() if run.finished_at]
    return FanOutRun(
        total=(job.updated_at - job.created_at).total_seconds(),
        first_start=(min(starts) - job.created_at).total_seconds(),
        connectors=(max(ends) - min(starts)).total_seconds(),
        bundle=(job.updated_at - max(ends)).total_seconds(),
    )


async def _one_job(resources: Resources, subject: str, within: float) -> FanOutRun:
    job = await Commands(resources).request_export(Actor("benchmark", staff=False), subject=subject)

    async def ended() -> bool:
        return (await resources.store.get(job.id)).status.terminal

    await wait_until(ended, f"waiting for the job of {subject}", within)
    done = await resources.store.get(job.id)
    if done.status is not JobStatus.SUCCEEDED:
        raise BenchmarkError(f"fan-out job {done.status}: {done.error}")
    return _timings(done)


async def run_setup(
    setup: Setup, redis: ArqRedis, workdir: Path, endpoint: str, bucket: str
) -> list[FanOutRun]:
    """Start the setup's workers, run the job ``REPEATS`` times, stop them."""
    await redis.flushdb()
    config = workdir / f"fanout-{setup.connectors}.toml"
    config.write_text(
        "".join(
            f'[connectors.api-{n:02d}]\ntype = "bench-sleepy"\nseconds = {SECONDS}\n'
            for n in range(setup.connectors)
        )
    )
    env = base_environment(
        config=str(config),
        redis_url=REDIS_URL,
        data_dir=str(workdir / "data"),
        s3_bucket=bucket,
        s3_endpoint_url=endpoint,
        worker_concurrency=str(setup.concurrency),
    )
    env["PYTHONPATH"] = install_plugin(workdir / "plugin")
    runs = []
    with ProcessGroup(workdir) as group:
        async with open_resources(Settings.load(env), redis=redis) as resources:
            for number in range(setup.processes):
                await start_worker(group, redis, env, f"worker-{number}")
            for repeat in range(REPEATS):
                await asyncio.sleep(0.25)  # arrive mid-way between two polls of the queue
                subject = f"fanout-{setup.connectors}-{setup.processes}-{repeat}"
                runs.append(await _one_job(resources, subject, 30 + setup.connectors))
    return runs


async def measure(args: argparse.Namespace, workdir: Path) -> Table:
    """Every setup; the table."""
    table = Table(
        key="fanout",
        title="2. Fan-out",
        intro=(
            f"One export over N connectors that each answer after {SECONDS:.0f} s "
            "(`bench-sleepy`), on `handover worker` processes already polling, S3 on moto. "
            "Time = job created → succeeded; the reference is the ideal: one connector's "
            f"{SECONDS:.0f} s. Medians of {REPEATS} jobs per row."
        ),
        columns=[
            "connectors",
            "worker processes × HANDOVER_WORKER_CONCURRENCY",
            "job s",
            "reference (one connector) s",
            "split: first start / connectors / bundle s",
            "target",
            "result",
        ],
    )
    install_plugin(workdir / "plugin")
    redis = await fresh_redis()
    with ProcessGroup(workdir) as group:
        endpoint = group.start_moto()
        bucket = "handover-bench-fanout"
        create_bucket(endpoint, bucket)
        for setup in SETUPS:
            runs = await run_setup(setup, redis, workdir, endpoint, bucket)
            total = median([r.total for r in runs])
            target = TARGETS[setup.connectors]
            split = " / ".join(
                f"{median([getattr(r, part) for r in runs]):.2f}"
                for part in ("first_start", "connectors", "bundle")
            )
            table.rows.append(
                [
                    str(setup.connectors),
                    f"{setup.processes} × {setup.concurrency}",
                    f"{total:.2f}",
                    f"{SECONDS:.2f}",
                    split,
                    f"< {target} s",
                    verdict(total < target),
                ]
            )
    await redis.aclose()
    table.notes += [
        "Split: first start = created → the first connector run starts (arq's poll of the "
        "queue, every `HANDOVER_WORKER_POLL_DELAY`, 50 ms); connectors = first start → last "
        "finish; bundle = last finish → succeeded (the finish task, queued by the last run "
        "and started at once by the worker that ran it, then the archive).",
        "A worker process runs at most HANDOVER_WORKER_CONCURRENCY tasks at once, so N "
        "connectors need processes × concurrency ≥ N to run in one wave.",
    ]
    return table


if __name__ == "__main__":
    benchmark_main("fanout", measure, __doc__ or "")
