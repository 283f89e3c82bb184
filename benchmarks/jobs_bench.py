"""Jobs: tiny exports per second end to end, on one and two workers, beside arq's no-op rate.

- **Reference**: one plain arq worker process with Handover's worker settings
  (``poll_delay`` ``HANDOVER_WORKER_POLL_DELAY``, 50 ms; ``max_jobs``
  ``HANDOVER_WORKER_CONCURRENCY``, 50; its JSON payloads, results kept, aborts allowed,
  as ``jobs.worker.create_worker`` sets them) on the same Redis database, draining
  no-op jobs that this process enqueues, 50 at a time, while it runs. arq's own
  defaults (0.5 s, 10 jobs) would cap it near 20 polls × 10 jobs a second, an unfair
  reference.
- **Handover**: one, then two ``handover worker`` processes (default settings,
  started one after the other and polling before any job exists) run tiny exports
  (one ``bench-sleepy`` connector answering at once with three records) that this
  process creates through ``Commands.request_export``, 20 at a time, one subject each.
  Each export is three arq tasks (the identity step, the connector run and the finish),
  three S3 requests at most (the staged object put, its previews at its end, and kept by
  the worker for its finish; the signed archive put; the staged object deleted, with
  those of the jobs ending meanwhile) and the job's bookkeeping in Redis.
  Storage: S3 on moto's server, keeping connections alive as S3 does
  (``harness.ProcessGroup.start_moto``; moto's own server closes each one).

Rate = jobs / wall time from the first enqueue (or create) to the moment every job
is done (polled every 20 ms). Medians of three runs per row.

Run alone: ``.venv/bin/python benchmarks/jobs_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker

from bench_connectors import install_plugin
from harness import (
    REDIS_URL,
    BenchmarkError,
    Process,
    ProcessGroup,
    Table,
    base_environment,
    benchmark_main,
    create_bucket,
    empty_bucket,
    fresh_redis,
    median,
    redis_cpu_seconds,
    sixteen_cores,
    start_worker,
    verdict,
    wait_until,
)
from jobs.commands import Actor, Commands
from jobs.model import JobStatus
from jobs.queue import deserialize, serialize
from jobs.resources import open_resources
from jobs.settings import Settings
from jobs.worker import HEALTH_CHECK_INTERVAL

NOOP_QUEUE = "handover-bench:noop"
NOOP_HEALTH_KEY = f"{NOOP_QUEUE}:health-check"
NOOP_JOBS = 4000  # ~3 s at the rate arq reaches with Handover's settings
HANDOVER_DEFAULTS = Settings()
POLL_MS = HANDOVER_DEFAULTS.worker_poll_delay.total_seconds() * 1000
ENQUEUE_CONCURRENCY = 50
CREATE_CONCURRENCY = 20
REPEATS = 3
RUN_SECONDS = 3.0  # how long each Handover run should last, to size it
SIZING_JOBS = 30
ONE_WORKER_SHARE = 0.10
TWO_WORKER_SCALING = 1.7
CONFIG = '[connectors.tiny]\ntype = "bench-sleepy"\nseconds = 0\nrecords = 3\n'


async def noop(ctx: dict[str, Any]) -> None:
    """The reference task: nothing."""


def run_noop_worker(redis_url: str) -> None:
    """A plain arq worker with Handover's worker settings (the ``noop-worker`` child)."""
    worker = Worker(
        functions=[noop],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=NOOP_QUEUE,
        health_check_key=NOOP_HEALTH_KEY,
        poll_delay=HANDOVER_DEFAULTS.worker_poll_delay.total_seconds(),
        max_jobs=HANDOVER_DEFAULTS.worker_concurrency,
        job_serializer=serialize,
        job_deserializer=deserialize,
        keep_result=3600,
        allow_abort_jobs=True,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )
    worker.run()


async def _bounded(count: int, concurrency: int, make: Callable[[int], Awaitable[Any]]) -> None:
    """Call ``make(0..count-1)`` with at most ``concurrency`` awaiting at once."""
    numbers = iter(range(count))

    async def lane() -> None:
        for number in numbers:
            await make(number)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def _rate_until(
    count: int, started: float, done: Callable[[], Awaitable[int]], watch: list[Process]
) -> float:
    async def finished() -> bool:
        return await done() >= count

    await wait_until(finished, f"waiting for {count} jobs", 120, interval=0.02, watch=watch)
    return count / (time.perf_counter() - started)


async def noop_rate(redis: ArqRedis, worker: Process) -> float:
    """No-op jobs per second through one plain arq worker."""
    pool = await create_pool(
        RedisSettings.from_dsn(REDIS_URL),
        default_queue_name=NOOP_QUEUE,
        job_serializer=serialize,
        job_deserializer=deserialize,
    )
    run = uuid.uuid4().hex[:8]
    keys = [f"arq:result:noop-{run}-{n}" for n in range(NOOP_JOBS)]

    async def enqueue(number: int) -> None:
        await pool.enqueue_job("noop", _job_id=f"noop-{run}-{number}")

    async def done() -> int:
        return int(await redis.exists(*keys))

    started = time.perf_counter()
    await _bounded(NOOP_JOBS, ENQUEUE_CONCURRENCY, enqueue)
    rate = await _rate_until(NOOP_JOBS, started, done, [worker])
    await pool.aclose()
    return rate


async def export_rate(
    commands: Commands, redis: ArqRedis, count: int, workers: list[Process]
) -> float:
    """Tiny exports per second through the running workers."""
    run = uuid.uuid4().hex[:8]
    succeeded = f"handover:idx:status:{JobStatus.SUCCEEDED.value}"
    failed = f"handover:idx:status:{JobStatus.FAILED.value}"

    async def create(number: int) -> None:
        await commands.request_export(
            Actor("benchmark", staff=False), subject=f"subject-{run}-{number}"
        )

    async def done() -> int:
        if await redis.zcard(failed):
            raise BenchmarkError("a tiny export failed:\n" + workers[0].log_tail())
        return int(await redis.zcard(succeeded))

    await redis.delete(succeeded)
    started = time.perf_counter()
    await _bounded(count, CREATE_CONCURRENCY, create)
    return await _rate_until(count, started, done, workers)


async def handover_rates(
    group: ProcessGroup,
    redis: ArqRedis,
    workdir: Path,
    processes: int,
    s3: tuple[str, str] | None,
) -> tuple[list[float], dict[str, float]]:
    """Start ``processes`` workers; a sizing run, then ``REPEATS`` measured runs.

    Returns the rates and each process's CPU seconds per job over the measured runs:
    the workers', Redis's, moto's and this process's (creating the jobs).
    """
    await redis.flushdb()
    config = workdir / "jobs.toml"
    config.write_text(CONFIG)
    storage = {"s3_bucket": s3[1], "s3_endpoint_url": s3[0]} if s3 else {}
    env = base_environment(
        config=str(config), redis_url=REDIS_URL, data_dir=str(workdir / "data"), **storage
    )
    env["PYTHONPATH"] = install_plugin(workdir / "plugin")
    workers = []
    rates = []
    async with open_resources(Settings.load(env), redis=redis) as resources:
        for number in range(processes):
            workers.append(await start_worker(group, redis, env, f"worker-{number}"))
        commands = Commands(resources)
        sizing = await export_rate(commands, redis, SIZING_JOBS, workers)
        count = max(100, min(3000, round(sizing * RUN_SECONDS)))
        moto = next(process for process in group.processes if process.name == "moto")
        before = _cpu(workers, moto)
        for _ in range(REPEATS):
            rates.append(await export_rate(commands, redis, count, workers))
        used = {
            name: (after - before[name]) / (count * REPEATS)
            for name, after in _cpu(workers, moto).items()
        }
    for worker in workers:
        worker.stop()
    if s3:
        empty_bucket(*s3)
    return rates, used


def _cpu(workers: list[Process], moto: Process) -> dict[str, float]:
    """CPU seconds used so far by the workers (together), Redis, moto and this process."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "worker": sum(worker.cpu_seconds() for worker in workers),
        "Redis": redis_cpu_seconds(),
        "moto": moto.cpu_seconds(),
        "client": own.ru_utime + own.ru_stime,
    }


async def measure(args: argparse.Namespace, workdir: Path) -> Table:
    """The reference and both worker counts, for both stores; the table."""
    table = Table(
        key="jobs",
        title="4. Jobs",
        intro=(
            "Tiny exports (one connector, three records) per second end to end through "
            "`handover worker` processes (default settings: concurrency 50, "
            "polling every 50 ms), beside a plain arq worker's no-op jobs per second "
            f"with the same settings (poll {POLL_MS:.0f} ms, "
            f"max_jobs {HANDOVER_DEFAULTS.worker_concurrency}, JSON payloads; same Redis, "
            "same run). Medians of "
            f"{REPEATS} runs of ~{RUN_SECONDS:.0f} s."
        ),
        columns=[
            "case",
            "jobs/s",
            "reference: arq no-op jobs/s (Handover's settings)",
            "vs reference",
            "2 workers / 1 worker",
            "target",
            "result",
        ],
    )
    install_plugin(workdir / "plugin")
    redis = await fresh_redis()
    with ProcessGroup(workdir) as group:
        endpoint = group.start_moto()
        s3 = (endpoint, "handover-bench-jobs")
        create_bucket(*s3)
        await redis.delete(NOOP_HEALTH_KEY)
        noop_worker = group.start(
            "noop-worker",
            [sys.executable, str(Path(__file__)), "noop-worker", REDIS_URL],
            base_environment(),
        )

        async def polling() -> bool:
            return bool(await redis.exists(NOOP_HEALTH_KEY))

        await wait_until(polling, "waiting for the arq worker", 30, watch=[noop_worker])
        noop_rates = [await noop_rate(redis, noop_worker) for _ in range(REPEATS)]
        noop_worker.stop()
        reference = median(noop_rates)
        table.rows.append(
            [
                "arq no-op, 1 worker, Handover's settings",
                f"{reference:,.0f}",
                f"{reference:,.0f}",
                "100%",
                "",
                "reference",
                "",
            ]
        )
        rates, per_job = await handover_rates(group, redis, workdir, 1, s3)
        one = median(rates)
        two = median((await handover_rates(group, redis, workdir, 2, s3))[0])
        share = one / reference
        table.rows.append(
            [
                "tiny exports → S3 (moto), 1 worker",
                f"{one:,.1f}",
                f"{reference:,.0f}",
                f"{share:.1%}",
                "",
                f"≥ {ONE_WORKER_SHARE:.0%} of reference",
                verdict(share >= ONE_WORKER_SHARE),
            ]
        )
        table.rows.append(
            [
                "tiny exports → S3 (moto), 2 workers",
                f"{two:,.1f}",
                f"{reference:,.0f}",
                f"{two / reference:.1%}",
                f"{two / one:.2f}×",
                f"≥ {TWO_WORKER_SCALING}× one worker",
                verdict(two >= TWO_WORKER_SCALING * one),
            ]
        )
    await redis.flushdb()
    await redis.aclose()
    client = per_job.pop("client")
    table.notes += [
        "Everything shares the machine's 2 cores: worker process(es), Redis, moto (for S3), "
        "and this benchmark's own process creating the jobs.",
        "Tiny exports, 1 worker: " + sixteen_cores(per_job, "worker", "job"),
        "The projection: CPU per job = each process's CPU seconds over the measured runs' "
        "jobs (Redis's from `INFO cpu`); workers scale with cores, Redis and moto (standing "
        "in for S3, which is not on this machine in production) are one process each; the "
        f"jobs' creator ({client * 1e6:,.0f} µs per job here, through `Commands`, as the API "
        "creates them) is left out, as API processes would be elsewhere.",
    ]
    return table


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "noop-worker":
        run_noop_worker(sys.argv[2])
    else:
        benchmark_main("jobs", measure, __doc__ or "")
