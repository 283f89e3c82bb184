"""Export throughput and memory: one subject's telemetry through a real worker into an archive.

What it measures, for 100 MB and 1 GB of rendered NDJSON (``SyntheticConnector``
with ``entropy = 0.35``, which compresses about 3.7:1 like real NDJSON; its
default text compresses ~10:1 and would flatter deflate):

- **Handover**: a ``handover worker`` process (configured by a TOML file, as in
  production) exports the subject, once to S3 (moto's server, in its own process)
  and once to the local store. Input MB/s is the uncompressed NDJSON bytes the job
  recorded divided by its wall time from ``created_at`` to ``succeeded``
  (``updated_at``); the worker is started and polling before the job is created, and
  has run one small export first (1,000 records of a second connector), as a worker in
  service has: what a process does once, at its first archive (compiling the index
  page's template, loading its locale's data, botocore's first call of each S3
  operation: about 0.1 s), is not the measured export's.
  Peak RSS is the worker's own ``VmHWM``, read just before it is stopped (not
  ``wait4``'s, which counts the benchmark's own peak too: see ``harness.Ended``).
- **L_pipeline**, what Handover must do per byte, at its fastest: the same records,
  generated beforehand (generation is not timed), rendered as NDJSON
  (``orjson.dumps(row) + b"\n"``), hashed (SHA-256), checksummed (CRC-32, isal) and
  deflated (isal level 1), in one thread, no I/O.
- **L_source**, the connector alone: its ``export()`` iterated to the end and
  nothing done with what it yields, in one thread; for ``SyntheticConnector`` (which
  spends most of its time in ``random``) and for ``bench-replay``, which replays
  records generated once at start, so an export from it costs Handover's work and
  hardly any of the source's.
- Every Handover figure is given against both: a synthetic-source export can be no
  faster than its L_source, a replayed one is held to L_pipeline.
- **The bound for S3** (:func:`moto_floor`): what moto itself takes for an archive of
  the replayed export's size through the design (staged object, then the archive
  copied from it server-side), each step alone, added to staging's least work: the
  fastest any such export to moto can be here, beside which the S3 target is judged.
- **(b) the naive baseline**: every record in a list, ``json.dumps``, ``zipfile``
  into a ``BytesIO``, one ``put_object``; in a child process for its own peak RSS.
- **Bundling CPU**: the worker's CPU seconds from the moment the job record shows
  every connector run finished to the job's end (:class:`CpuReading`: to the
  nanosecond, or in ticks if a thread ended meanwhile; sampled when the record,
  polled every 10 ms, first shows each), for the 1 GB replayed
  export to S3 with server-side copy (the default) against, as its reference, one
  more such export with ``HANDOVER_S3_SERVER_SIDE_COPY=false``, bundled through the
  worker. Both are also given, and the target held to them, less what the same worker
  spends idle over as long (its idle CPU per second, read for ``IDLE_SECONDS`` before
  the job): an idle worker polls the queue every 50 ms whatever it does, and with
  server-side copy the worker mostly waits while S3 copies (moto for 3-8 s, in its own
  Python on the same two cores, slower as the machine is busier): counted raw, that
  wait's polling was a third or more of the figure, and grew with the machine's load,
  not with bundling.

Three repeats at 100 MB (medians), one at 1 GB (a run of 10-40 s averages itself).

Run alone: ``.venv/bin/python benchmarks/export_bench.py`` (``--quick``: 100 MB only;
``--naive-1gb``: (b) at 1 GB too, which takes about a minute and 4 GB of memory, so
``make bench`` leaves it out to stay within its ten minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import orjson
from arq.connections import ArqRedis
from isal import isal_zlib

from bench_connectors import ReplayConnector, install_plugin
from connectors.base import Connector
from connectors.items import Subject
from connectors.testing import SyntheticConnector
from harness import (
    MB,
    REDIS_URL,
    BenchmarkError,
    Process,
    ProcessGroup,
    Table,
    base_environment,
    benchmark_main,
    child_result,
    create_bucket,
    empty_bucket,
    fresh_redis,
    median,
    process_peak_rss_mb,
    start_worker,
    timer,
    verdict,
    wait_until,
)
from jobs.commands import Actor, Commands
from jobs.model import Job, JobStatus
from jobs.resources import Resources, open_resources
from jobs.settings import Settings
from jobs.storage.s3 import COPY_PART, MIN_PART, written_part_size

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

RECORD_BYTES = 500
ENTROPY = 0.35
SEED = 3
SUBJECT = "alice"
BATCH = 2000
SIZES = (("100 MB", 100 * MB, 3), ("1 GB", 1000 * MB, 1))
NAIVE_MEMORY_FACTOR = 6  # the naive baseline needs about this many bytes of RAM per input byte
RSS_LIMIT_MB = 110  # a 1 GB export to S3
RSS_GROWTH_MB = 10  # over the 100 MB run


def connector(records: int) -> SyntheticConnector:
    """The telemetry source every case reads."""
    return SyntheticConnector(
        "telemetry", records=records, record_bytes=RECORD_BYTES, seed=SEED, entropy=ENTROPY
    )


def records_for(size: int) -> int:
    """How many records render to about ``size`` bytes of NDJSON."""
    sample = connector(20_000)._rows(Subject(SUBJECT))
    line = sum(len(orjson.dumps(row)) + 1 for row in sample) / 20_000
    return round(size / line)


def measure_pipeline(records: int) -> dict[str, float]:
    """L_pipeline: render, SHA-256, CRC-32 and deflate in one thread; generation untimed."""
    rows = connector(records)._rows(Subject(SUBJECT))
    deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
    sha = hashlib.sha256()
    crc = 0
    generating = working = 0.0
    size = compressed = 0
    while True:
        start = time.perf_counter()
        batch = list(itertools.islice(rows, BATCH))
        middle = time.perf_counter()
        if not batch:
            break
        data = b"".join([orjson.dumps(row) + b"\n" for row in batch])
        sha.update(data)
        crc = isal_zlib.crc32(data, crc)
        compressed += len(deflate.compress(data))
        size += len(data)
        working += time.perf_counter() - middle
        generating += middle - start
    start = time.perf_counter()
    compressed += len(deflate.flush())
    sha.hexdigest()
    working += time.perf_counter() - start
    return {
        "seconds": working,
        "generate_seconds": generating,
        "bytes": size,
        "compressed": compressed,
        "records": records,
    }


def source_connector(connector_type: str, records: int) -> Connector:
    """The connector a case reads, configured as the worker configures it."""
    if connector_type == "bench-replay":
        return ReplayConnector(
            "telemetry", records=records, record_bytes=RECORD_BYTES, seed=SEED, entropy=ENTROPY
        )
    return connector(records)


async def _drain(source: Connector) -> tuple[int, float]:
    """Iterate the connector's export to its end; rows seen and seconds taken."""
    rows = 0
    start = time.perf_counter()
    # As Handover reads it: batches of rows where the connector yields them.
    async for item in source.export_batches(Subject(SUBJECT)):
        batch = getattr(item, "rows", None)
        rows += len(batch) if batch is not None else 1
    return rows, time.perf_counter() - start


def measure_source(connector_type: str, records: int) -> dict[str, float]:
    """L_source: the connector alone, its export iterated in one thread."""
    rows, seconds = asyncio.run(_drain(source_connector(connector_type, records)))
    return {"seconds": seconds, "records": rows}


def measure_naive(records: int, endpoint: str, bucket: str) -> dict[str, float]:
    """(b): the archive built whole in memory and sent with one ``put_object``."""
    with timer() as elapsed:
        rows = list(connector(records)._rows(Subject(SUBJECT)))
        data = json.dumps(rows).encode()
        del rows
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("telemetry/telemetry.json", data)
        size = len(data)
        del data
        client = boto3.client("s3", endpoint_url=endpoint)
        client.put_object(Bucket=bucket, Key="naive/export.zip", Body=buffer.getvalue())
    client.delete_object(Bucket=bucket, Key="naive/export.zip")
    return {
        "seconds": elapsed(),
        "bytes": size,
        "records": records,
        "peak_rss_mb": process_peak_rss_mb(),
    }


@dataclass(frozen=True)
class ExportRun:
    """One export through a worker process."""

    input_bytes: int
    records: int
    archive_bytes: int
    seconds: float
    wait_seconds: float
    stage_seconds: float
    bundle_seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    #: From every run finished to the job's end; None if the job record first showed the
    #: runs finished once the job had ended (bundling was not seen starting).
    bundle_cpu_seconds: float | None
    #: Whether ``bundle_cpu_seconds`` was read to the nanosecond (:meth:`CpuReading.since`).
    bundle_cpu_precise: bool
    #: What the same worker, idle, spent over as long (its idle CPU per second, measured
    #: before the job, times the seconds between the two readings); None if not measured.
    bundle_idle_cpu_seconds: float | None = None

    @property
    def bundle_cpu_over_idle(self) -> float | None:
        """The bundling CPU less what the worker would have spent idle meanwhile."""
        if self.bundle_cpu_seconds is None or self.bundle_idle_cpu_seconds is None:
            return None
        # An estimate, from the idle rate before the job: never below nothing.
        return max(0.0, self.bundle_cpu_seconds - self.bundle_idle_cpu_seconds)

    @property
    def mb_per_second(self) -> float:
        return self.input_bytes / MB / self.seconds

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds


def _export_run(
    job: Job,
    peak_rss_mb: float,
    cpu_seconds: float,
    bundle_cpu: tuple[float, bool] | None,
    bundle_idle_cpu_seconds: float | None = None,
) -> ExportRun:
    run = job.connectors["telemetry"]
    assert run.started_at and run.finished_at and job.result
    return ExportRun(
        input_bytes=run.bytes,
        records=run.records,
        archive_bytes=job.result.size,
        seconds=(job.updated_at - job.created_at).total_seconds(),
        wait_seconds=(run.started_at - job.created_at).total_seconds(),
        stage_seconds=(run.finished_at - run.started_at).total_seconds(),
        bundle_seconds=(job.updated_at - run.finished_at).total_seconds(),
        peak_rss_mb=peak_rss_mb,
        cpu_seconds=cpu_seconds,
        bundle_cpu_seconds=None if bundle_cpu is None else bundle_cpu[0],
        bundle_cpu_precise=bundle_cpu is not None and bundle_cpu[1],
        bundle_idle_cpu_seconds=bundle_idle_cpu_seconds,
    )


@dataclass(frozen=True)
class Case:
    """One way through Handover: a connector type, a store (S3 when ``s3``) and its target.

    ``reference`` names what the throughput target is a share of (``pipeline`` or
    ``source``); ``rss`` holds the case to the memory targets at the larger size;
    ``server_side_copy`` is ``HANDOVER_S3_SERVER_SIDE_COPY``.
    """

    label: str
    connector_type: str
    s3: bool
    reference: str
    share: float
    rss: bool = False
    server_side_copy: bool = True


CASES = (
    Case("Handover → S3 (moto)", "synthetic", s3=True, reference="source", share=0.9, rss=True),
    Case("Handover → local store", "synthetic", s3=False, reference="source", share=0.9),
    Case(
        "Handover → S3 (moto), source replayed",
        "bench-replay",
        s3=True,
        reference="pipeline",
        share=0.7,
    ),
    Case(
        "Handover → local store, source replayed",
        "bench-replay",
        s3=False,
        reference="pipeline",
        share=0.9,
    ),
)
SOURCES = {"synthetic": "SyntheticConnector", "bench-replay": "bench-replay"}
#: The export whose bundling CPU is held to its reference's.
BUNDLED_BY_S3 = CASES[2]
#: The reference: the same export, bundled through the worker.
BUNDLED_BY_WORKER = Case(
    "Handover → S3 (moto), source replayed, HANDOVER_S3_SERVER_SIDE_COPY=false",
    "bench-replay",
    s3=True,
    reference="pipeline",
    share=0.7,
    server_side_copy=False,
)
#: Bundling with server-side copy may cost the worker this share of bundling through it.
BUNDLE_CPU_SHARE = 0.05
#: How often the job record is read while an export runs (for the bundling CPU's start).
POLL_SECONDS = 0.01
#: How long the idle worker's CPU is read before the bundling CPU's job is created: its
#: crons start every 5 s (the sweep at :05, :15…, the watchdog at :00, :10…), so 5 s
#: holds one, as often as the bundling's own seconds do on average.
IDLE_SECONDS = 5.0
#: The connector each worker exports once, through :func:`_warm_up`, before it is measured.
WARM_UP = "warm-up"
WARM_UP_RECORDS = 1000


def on_cpu_seconds(pid: int) -> float:
    """The seconds the process's threads have run so far, to the nanosecond (the first
    field of each thread's ``/proc/<pid>/task/<tid>/schedstat``; ``/proc/<pid>/stat``
    counts 10 ms ticks, too coarse for the few ms a second an idle worker spends)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


@dataclass(frozen=True)
class CpuReading:
    """A process's CPU seconds so far, in 10 ms ticks (``/proc/<pid>/stat``, which keeps
    the time of threads that have ended) and to the nanosecond (:func:`on_cpu_seconds`,
    the threads running now), with the ids of those threads."""

    ticks: float
    precise: float
    threads: frozenset[str]

    @classmethod
    def of(cls, process: Process) -> CpuReading:
        threads = frozenset(task.name for task in Path(f"/proc/{process.pid}/task").iterdir())
        return cls(process.cpu_seconds(), on_cpu_seconds(process.pid), threads)

    def since(self, earlier: CpuReading) -> tuple[float, bool]:
        """The CPU seconds from ``earlier`` to this reading, and whether to the nanosecond:
        so when every thread of the first reading still runs (one that ended took its
        time with it), in ticks otherwise."""
        if earlier.threads <= self.threads:
            return self.precise - earlier.precise, True
        return self.ticks - earlier.ticks, False


async def idle_cpu_per_second(pid: int, seconds: float) -> float:
    """The CPU seconds per second the process spends over ``seconds`` (idle, here)."""
    before, start = on_cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (on_cpu_seconds(pid) - before) / (time.monotonic() - start)


async def _warm_up(resources: Resources, worker: Process) -> None:
    """One small export through ``worker`` (its :data:`WARM_UP` connector), to its end.

    A worker in service has exported before: what a process does once, at its first
    archive (compiling the index page's template, loading the locale's data, botocore's
    first call of each S3 operation; 0.1 s or so), is not the export's to carry.
    """
    job = await Commands(resources).request_export(
        Actor("benchmark", staff=False),
        subject=f"{SUBJECT}-warm-up",
        formats=["ndjson"],
        connectors=[WARM_UP],
    )

    async def ended() -> bool:
        return (await resources.store.get(job.id)).status.terminal

    await wait_until(ended, "waiting for the warm-up export", 30, watch=[worker])
    done = await resources.store.get(job.id)
    if done.status is not JobStatus.SUCCEEDED or done.result is None:
        raise BenchmarkError(f"warm-up export {done.status}: {done.error}\n{worker.log_tail()}")
    await resources.storage.delete(done.result.key)


async def export_through_worker(
    group: ProcessGroup,
    redis: ArqRedis,
    workdir: Path,
    records: int,
    case: Case,
    s3: tuple[str, str],
    idle_seconds: float = 0.0,
) -> ExportRun:
    """Start a worker, export the subject through it, stop it; ``s3`` = (endpoint, bucket).

    With ``idle_seconds``, the worker's idle CPU is read for that long before the job is
    created, and the run says what it would have spent idle while bundling.
    """
    await redis.flushdb()
    config = workdir / "export.toml"
    config.write_text(
        "".join(
            f"[connectors.{name}]\n"
            f'type = "{case.connector_type}"\nrecords = {count}\nrecord_bytes = {RECORD_BYTES}\n'
            f"seed = {SEED}\nentropy = {ENTROPY}\n"
            for name, count in (("telemetry", records), (WARM_UP, WARM_UP_RECORDS))
        )
    )
    data_dir = workdir / "data"
    storage = {"s3_bucket": s3[1], "s3_endpoint_url": s3[0]} if case.s3 else {}
    if not case.server_side_copy:
        storage["s3_server_side_copy"] = "false"
    env = base_environment(
        config=str(config), redis_url=REDIS_URL, data_dir=str(data_dir), **storage
    )
    env["PYTHONPATH"] = install_plugin(workdir / "plugin")
    try:
        async with open_resources(Settings.load(env), redis=redis) as resources:
            worker = await start_worker(group, redis, env)
            await _warm_up(resources, worker)
            idle_rate = (
                await idle_cpu_per_second(worker.pid, idle_seconds) if idle_seconds else None
            )
            await asyncio.sleep(0.25)  # arrive mid-way between two polls of the queue
            job = await Commands(resources).request_export(
                Actor("benchmark", staff=False),
                subject=SUBJECT,
                formats=["ndjson"],
                connectors=["telemetry"],
            )

            cpu_when: dict[str, CpuReading] = {}
            when: dict[str, float] = {}

            async def ended() -> bool:
                """Whether the job ended; the worker's CPU noted when every run has
                finished (bundling starts) and when the job ends."""
                seen = await resources.store.get(job.id)
                if seen.status.terminal:
                    cpu_when["ended"] = CpuReading.of(worker)
                    when["ended"] = time.monotonic()
                    return True
                runs = seen.connectors.values()
                if "runs finished" not in cpu_when and all(r.finished_at for r in runs):
                    cpu_when["runs finished"] = CpuReading.of(worker)
                    when["runs finished"] = time.monotonic()
                return False

            await wait_until(
                ended,
                "waiting for the export",
                30 + records / 5000,
                interval=POLL_SECONDS,
                watch=[worker],
            )
            stopped = worker.stop()
            done = await resources.store.get(job.id)
            if done.status is not JobStatus.SUCCEEDED or done.result is None:
                raise BenchmarkError(f"export {done.status}: {done.error}\n{worker.log_tail()}")
            await resources.storage.delete(done.result.key)
            started = cpu_when.get("runs finished")
            bundle_cpu = None if started is None else cpu_when["ended"].since(started)
            idle_cpu = (
                None
                if started is None or idle_rate is None
                else idle_rate * (when["ended"] - when["runs finished"])
            )
            return _export_run(done, stopped.peak_rss_mb, stopped.cpu_seconds, bundle_cpu, idle_cpu)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        if case.s3:
            empty_bucket(*s3)


def moto_floor(moto: Process, endpoint: str, bucket: str, size: int) -> dict[str, float]:
    """What the design asks of S3 (``moto``) for an archive of ``size`` bytes, each step
    alone: the CPU seconds of sending the staged object's parts, moto's and the sender's
    (``upload``; incompressible bytes as a deflated archive's are, in parts sized as the
    worker's), then the seconds its upload takes to complete (``staged``), the archive's
    parts to be copied from it (``copy``) and that upload to complete (``archive``)."""
    client = boto3.client("s3", endpoint_url=endpoint)
    staged, archive = "bound/staged", "bound/archive"
    block = os.urandom(MIN_PART)
    seconds: dict[str, float] = {}
    upload = client.create_multipart_upload(Bucket=bucket, Key=staged)["UploadId"]
    parts: list[CompletedPartTypeDef] = []
    lengths: list[int] = []
    sent = 0
    while sent < size:
        lengths.append(min(written_part_size(MIN_PART, len(lengths) + 1), size - sent))
        sent += lengths[-1]
    bodies = [block if n == len(block) else (block * (n // len(block) + 1))[:n] for n in lengths]
    cpu = time.process_time(), moto.cpu_seconds()
    for number, body in enumerate(bodies, start=1):
        answer = client.upload_part(
            Bucket=bucket, Key=staged, UploadId=upload, PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    seconds["upload"] = time.process_time() - cpu[0] + moto.cpu_seconds() - cpu[1]
    with timer() as elapsed:
        client.complete_multipart_upload(
            Bucket=bucket, Key=staged, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    seconds["staged"] = elapsed()
    upload = client.create_multipart_upload(Bucket=bucket, Key=archive)["UploadId"]
    copied: list[CompletedPartTypeDef] = []
    with timer() as elapsed:
        for start in range(0, size, COPY_PART):
            end = min(start + COPY_PART, size) - 1
            copy = client.upload_part_copy(
                Bucket=bucket,
                Key=archive,
                UploadId=upload,
                PartNumber=len(copied) + 1,
                CopySource={"Bucket": bucket, "Key": staged},
                CopySourceRange=f"bytes={start}-{end}",
            )
            copied.append({"PartNumber": len(copied) + 1, "ETag": copy["CopyPartResult"]["ETag"]})
    seconds["copy"] = elapsed()
    with timer() as elapsed:
        client.complete_multipart_upload(
            Bucket=bucket, Key=archive, UploadId=upload, MultipartUpload={"Parts": copied}
        )
    seconds["archive"] = elapsed()
    client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": staged}, {"Key": archive}], "Quiet": True}
    )
    return seconds


def _child(*args: str) -> list[str]:
    return [str(Path(__file__)), *args]


def _available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _row(
    label: str, case: str, mbs: float, rps: float, shares: tuple[str, str], rss: str
) -> list[str]:
    return [label, case, f"{mbs:.0f}", f"{rps:,.0f}", *shares, rss]


def _share(value: float, reference: float) -> str:
    """The share as a percentage; "< 1%" rather than a rounded 0% (a replayed source is
    hundreds of times faster than any export of it)."""
    share = value / reference
    return "< 1%" if share < 0.005 else f"{share:.0%}"


async def measure(args: argparse.Namespace, workdir: Path) -> Table:
    """Every case, every size; the table."""
    table = Table(
        key="export",
        title="1. Export throughput and memory",
        intro=(
            f"One subject, `SyntheticConnector` telemetry ({RECORD_BYTES}-byte records, "
            f"`entropy = {ENTROPY}`), `ndjson`, through one `handover worker` process "
            "(default settings, warmed by one export of 1,000 records first, as a worker in "
            "service is) into the signed archive. MB/s = uncompressed NDJSON bytes "
            "per second of job wall time (created → succeeded); RSS = the process's own peak "
            "(`VmHWM` just before it is stopped; `wait4` would report at least the peak of "
            "the benchmark process that started it). **L_pipeline** = render "
            '(`orjson.dumps(row) + b"\\n"`) + SHA-256 '
            "+ CRC-32 + deflate (isal level 1) of pre-generated records in one thread, no "
            "I/O: what Handover must do per byte. **L_source** = the connector alone, its "
            "`export()` iterated in one thread (synthetic or replayed): no export from it "
            "can be faster. Each figure is given against both; a synthetic-source export is "
            "held to its L_source, a replayed one to L_pipeline. (b) = naive in-memory "
            "archive (`json.dumps`, `zipfile` level 6 into `BytesIO`, one `put_object` to "
            "moto). Medians of the repeats."
        ),
        columns=[
            "size",
            "case",
            "input MB/s",
            "records/s",
            "vs L_pipeline",
            "vs L_source",
            "peak RSS MB",
            "time split: wait / stage / bundle s",
            "worker CPU",
            "target",
            "result",
        ],
    )
    sizes = SIZES[:1] if args.quick else SIZES
    install_plugin(workdir / "plugin")
    redis = await fresh_redis()
    environ = base_environment()
    with ProcessGroup(workdir) as group:
        endpoint = group.start_moto()
        moto = next(process for process in group.processes if process.name == "moto")
        s3 = (endpoint, "handover-bench-export")
        create_bucket(*s3)
        first_rss: dict[str, float] = {}
        for label, size, repeats in sizes:
            records = records_for(size)
            pipelines: list[dict[str, float]] = []
            sources: dict[str, list[dict[str, float]]] = {kind: [] for kind in SOURCES}
            runs: dict[Case, list[ExportRun]] = {case: [] for case in CASES}
            for repeat in range(repeats):
                if repeat == 0 or size <= 100 * MB:
                    pipelines.append(
                        child_result(_child("pipeline", str(records)), environ, 600)[0]
                    )
                    for kind in SOURCES:
                        sources[kind].append(
                            child_result(_child("source", kind, str(records)), environ, 600)[0]
                        )
                for case in CASES:
                    idle = IDLE_SECONDS if case is BUNDLED_BY_S3 and size > 100 * MB else 0.0
                    runs[case].append(
                        await export_through_worker(
                            group, redis, workdir, records, case, s3, idle_seconds=idle
                        )
                    )
            bundled_by_worker = (
                await export_through_worker(
                    group, redis, workdir, records, BUNDLED_BY_WORKER, s3, IDLE_SECONDS
                )
                if size > 100 * MB
                else None
            )
            line_bytes = median([x["bytes"] / x["records"] for x in pipelines])
            pipeline_mbs = median([x["bytes"] / MB / x["seconds"] for x in pipelines])
            pipeline_rps = median([x["records"] / x["seconds"] for x in pipelines])
            ratio = median([x["bytes"] / x["compressed"] for x in pipelines])
            source_rps = {
                kind: median([x["records"] / x["seconds"] for x in found])
                for kind, found in sources.items()
            }
            source_mbs = {kind: rps * line_bytes / MB for kind, rps in source_rps.items()}
            name = "L_pipeline: render + SHA-256 + CRC-32 + deflate, one thread"
            shares = ("100%", _share(pipeline_mbs, source_mbs["synthetic"]))
            table.rows.append(
                [
                    *_row(label, name, pipeline_mbs, pipeline_rps, shares, ""),
                    "",
                    "",
                    "reference",
                    "",
                ]
            )
            for kind, title in SOURCES.items():
                name = f"L_source: {title} alone, one thread"
                shares = (_share(source_mbs[kind], pipeline_mbs), "100%")
                table.rows.append(
                    [
                        *_row(label, name, source_mbs[kind], source_rps[kind], shares, ""),
                        "",
                        "",
                        "reference",
                        "",
                    ]
                )
            if size > 100 * MB and not args.naive_1gb:
                table.notes.append(
                    f"(b) at {label} left out to keep `make bench` short; "
                    "`benchmarks/export_bench.py --naive-1gb` measures it."
                )
            elif _available_memory() > NAIVE_MEMORY_FACTOR * size:
                naive, _ = child_result(_child("naive", str(records), *s3), environ, 900)
                naive_mbs = naive["bytes"] / MB / naive["seconds"]
                name = "(b) naive: in memory, one put_object"
                shares = (
                    _share(naive_mbs, pipeline_mbs),
                    _share(naive_mbs, source_mbs["synthetic"]),
                )
                rps = records / naive["seconds"]
                table.rows.append(
                    [
                        *_row(label, name, naive_mbs, rps, shares, f"{naive['peak_rss_mb']:,.0f}"),
                        "",
                        "",
                        "contrast",
                        "",
                    ]
                )
            else:
                table.notes.append(
                    f"(b) at {label} skipped: it needs ~{NAIVE_MEMORY_FACTOR * size / 2**30:.0f} "
                    "GiB of free memory, which this machine did not have."
                )
            for case in CASES:
                mbs = median([r.mb_per_second for r in runs[case]])
                rss = median([r.peak_rss_mb for r in runs[case]])
                reference = (
                    pipeline_mbs
                    if case.reference == "pipeline"
                    else source_mbs[case.connector_type]
                )
                ok = mbs >= case.share * reference
                target = f"≥ {case.share:.0%} of L_{case.reference}"
                if case.rss and case.label in first_rss:
                    target += f"; RSS ≤ {RSS_LIMIT_MB} MB, ≤ first size + {RSS_GROWTH_MB}"
                    ok = ok and rss <= RSS_LIMIT_MB and rss - first_rss[case.label] <= RSS_GROWTH_MB
                else:
                    first_rss[case.label] = rss
                split = " / ".join(
                    f"{median([getattr(r, part) for r in runs[case]]):.2f}"
                    for part in ("wait_seconds", "stage_seconds", "bundle_seconds")
                )
                cpu = median([r.cpu_seconds / r.seconds for r in runs[case]])
                rps = median([r.records_per_second for r in runs[case]])
                shares = (
                    _share(mbs, pipeline_mbs),
                    _share(mbs, source_mbs[case.connector_type]),
                )
                table.rows.append(
                    [
                        *_row(label, case.label, mbs, rps, shares, f"{rss:.0f}"),
                        split,
                        f"{cpu:.0%}",
                        target,
                        verdict(ok),
                    ]
                )
            archive = round(median([r.archive_bytes for r in runs[BUNDLED_BY_S3]]))
            floor = moto_floor(moto, *s3, archive)
            # Sending the staged parts (moto's CPU and the sender's) shares both cores with
            # staging's own work (at best L_pipeline's); each later step waits for the one
            # before.
            input_mb = median([r.input_bytes for r in runs[BUNDLED_BY_S3]]) / MB
            bound = (input_mb / pipeline_mbs + floor["upload"]) / 2 + sum(
                floor[step] for step in ("staged", "copy", "archive")
            )
            shares = (
                _share(input_mb / bound, pipeline_mbs),
                _share(input_mb / bound, source_mbs["bench-replay"]),
            )
            name = (
                f"bound, S3 (moto): staging at L_pipeline on both cores, sharing them with "
                f"sending its parts, then what moto takes for the archive's {archive / MB:.0f} MB"
            )
            table.rows.append(
                [
                    *_row(label, name, input_mb / bound, records / bound, shares, ""),
                    "sending {upload:.2f}, completing {staged:.2f}, copying {copy:.2f}, "
                    "completing {archive:.2f} s".format(**floor),
                    "",
                    "bound",
                    "",
                ]
            )
            if bundled_by_worker is not None:
                mbs = bundled_by_worker.mb_per_second
                shares = (_share(mbs, pipeline_mbs), _share(mbs, source_mbs["bench-replay"]))
                table.rows.extend(
                    _bundling_rows(label, runs[BUNDLED_BY_S3], bundled_by_worker, shares)
                )
            table.notes.append(
                f"{label}: {records:,} records; archive deflated {ratio:.2f}:1; "
                f"repeats: {repeats} (references {len(pipelines)}). Vs L_source: against the "
                "row's own source (synthetic or replayed); the reference rows against "
                "the synthetic one."
            )
    await redis.aclose()
    table.notes.append(
        "Time split: wait = created → the connector run starts (arq's poll), stage = the "
        "connector's records encoded, deflated and uploaded as its staged object, bundle = "
        "finish task picked up, archive assembled from staging, signed and uploaded. Worker "
        "CPU = the worker's CPU seconds over the job's wall time (200% = both cores). "
        "'Source replayed' = the same records from a pool generated once at start "
        "(`bench-replay`), which isolates Handover's own cost from the connector's."
    )
    table.notes.append(
        "Bound, S3 (moto): the fastest an export of this size to moto can be, here, "
        "through staged objects and an archive copied from them server-side (the design), "
        "from what moto and a client sending to it take, each step timed alone in this run "
        "(random bytes of the archive's size, in parts sized as the worker's): the staged "
        "object's parts sent, on the same two cores as staging's own work, L_pipeline's at "
        "best, and both spread over the two cores; then, each waiting for the one before, "
        "the staged upload completed (moto joins the parts' bytes in Python, in one "
        "thread), the archive's parts copied from it, and the archive's upload completed. "
        "A target above this bound cannot be met against moto on this machine."
    )
    table.notes.append(
        "Bundling CPU (1 GB, S3, source replayed): the worker's CPU seconds from the moment "
        "the job record shows every connector run finished to the job's end, read to the "
        "nanosecond (the first field of each of its threads' `/proc/<pid>/task/*/schedstat`) "
        "when every thread of the first reading still runs at the second (a thread that "
        "ends takes its time with it), in 10 ms ticks otherwise (`/proc/<pid>/stat` utime "
        "+ stime; the row says which); each read when the record, "
        f"polled every {POLL_SECONDS * 1000:.0f} ms, first shows it. The finish task is "
        "queued by the last connector run and started at once by the worker that ran it, so "
        f"the first reading may come up to {POLL_SECONDS * 1000:.0f} ms after bundling "
        "began; the worker idles once the job has ended. Server-side "
        "copy = the replayed S3 row's own export; its reference = one more export of the "
        "same records with `HANDOVER_S3_SERVER_SIDE_COPY=false`, every archive byte read "
        "from S3 and written by the worker, which computes SHA-256 and CRC-32. Over idle "
        "= less what the same worker spends idle over as long (its CPU read to the "
        f"nanosecond, `/proc/<pid>/task/*/schedstat`, for {IDLE_SECONDS:.0f} s before the "
        "job, per second, times the seconds between the two readings): an idle worker "
        "polls the queue every 50 ms, which costs it the same while S3 (moto, in its own "
        "Python, slower as the machine is busier) copies the archive's parts; the target "
        "is held to that figure, the raw one beside it."
    )
    return table


def _bundling_rows(
    label: str, by_s3: list[ExportRun], by_worker: ExportRun, shares: tuple[str, str]
) -> list[list[str]]:
    """The bundling CPU rows: the reference (bundled through the worker, its export's
    throughput ``shares`` of L_pipeline and L_source), then server-side copy's, held to
    at most :data:`BUNDLE_CPU_SHARE` of it, each less what the worker spends idle over as
    long (the raw figures beside)."""
    measured = [run.bundle_cpu_seconds for run in by_s3]
    over_idle = [run.bundle_cpu_over_idle for run in by_s3]
    if by_worker.bundle_cpu_seconds is None or None in measured:
        raise BenchmarkError("an export ended before its record showed its runs finished")
    if by_worker.bundle_cpu_over_idle is None or None in over_idle:
        raise BenchmarkError("the worker's idle CPU was not measured before bundling")
    raw_reference = by_worker.bundle_cpu_seconds
    raw = median([seconds for seconds in measured if seconds is not None])
    reference = by_worker.bundle_cpu_over_idle
    cpu = median([seconds for seconds in over_idle if seconds is not None])
    split = " / ".join(
        f"{getattr(by_worker, part):.2f}"
        for part in ("wait_seconds", "stage_seconds", "bundle_seconds")
    )
    name = "bundling CPU, S3: through the worker (`HANDOVER_S3_SERVER_SIDE_COPY=false`)"
    mbs, rps = by_worker.mb_per_second, by_worker.records_per_second
    copied_split = " / ".join(
        f"{median([getattr(r, part) for r in by_s3]):.2f}"
        for part in ("wait_seconds", "stage_seconds", "bundle_seconds")
    )
    precise = [run.bundle_cpu_precise for run in (by_worker, *by_s3)]
    read = (
        "to the ns" if all(precise) else f"in ticks: {precise.count(False)} of {len(precise)} runs"
    )
    return [
        [
            *_row(label, name, mbs, rps, shares, f"{by_worker.peak_rss_mb:.0f}"),
            split,
            f"{reference:.3f} s bundling over idle ({raw_reference:.3f} s raw)",
            "reference",
            "",
        ],
        [
            label,
            "bundling CPU, S3: server-side copy (default; the replayed S3 row's export)",
            *[""] * 5,
            copied_split,
            f"{cpu:.3f} s bundling over idle = {cpu / reference:.1%} "
            f"({raw:.3f} s raw = {raw / raw_reference:.1%}; read {read})",
            f"≤ {BUNDLE_CPU_SHARE:.0%} of bundling through the worker",
            verdict(reference > 0 and cpu <= BUNDLE_CPU_SHARE * reference),
        ],
    ]


def main() -> None:
    """Benchmark, or one of its child measurements (``pipeline`` / ``source`` / ``naive``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "pipeline":
        print(json.dumps(measure_pipeline(int(sys.argv[2]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "source":
        print(json.dumps(measure_source(sys.argv[2], int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "naive":
        print(json.dumps(measure_naive(int(sys.argv[2]), sys.argv[3], sys.argv[4])))
        return

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true", help="100 MB only")
        parser.add_argument("--naive-1gb", action="store_true", help="(b) at 1 GB too")

    benchmark_main("export", measure, __doc__ or "", configure)


if __name__ == "__main__":
    main()
