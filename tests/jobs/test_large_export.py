"""A large export through a real worker process: flat memory, every record, verified.

The worker runs as ``handover worker --burst`` in its own process, so its peak RSS
(its ``VmHWM``) is the worker's alone. The figures are printed for the record;
the bound asserted is generous (this is not a benchmark) but catches any code
path that would hold an export whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from arq.connections import ArqRedis

from connectors.items import Subject
from connectors.testing import SyntheticConnector
from jobs.archive.signing import Signer
from jobs.archive.verify import verify_archive
from jobs.commands import Actor, Commands
from jobs.export import HELD_OBJECT
from jobs.model import JobStatus
from jobs.resources import open_resources
from jobs.settings import Settings
from tests.conftest import REDIS_URL

RECORD_BYTES = 500
LARGE_RECORDS = 600_000  # ~300 MB of telemetry
SMALL_RECORDS = 2_000
PEAK_RSS_LIMIT_MB = 200


def peak_rss_mb(pid: int) -> int | None:
    """The process's resident-set high-water mark (``VmHWM``), in MB, while it runs.

    Read from /proc rather than from ``wait4``: a child's ``ru_maxrss`` also counts
    the parent image it was forked from before ``exec``, i.e. the test runner.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return None


def run_worker(environ: dict[str, str]) -> int:
    """Run a burst worker to completion; returns its peak RSS in MB, sampled every 20 ms.

    A measurement, not a wait: the process's exit is what ends it, and ``VmHWM`` can
    only be read while the process lives.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--burst"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, peak_rss_mb(process.pid) or 0)
        time.sleep(0.02)
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert process.returncode == 0, stderr[-2000:]
    return peak


async def export_through_worker_process(
    tmp_path: Path, s3_endpoint: str, bucket: str, redis: ArqRedis, records: int
) -> tuple[int, Path, Any]:
    config = tmp_path / f"handover-{records}.toml"
    config.write_text(
        "[connectors.telemetry]\n"
        f'type = "synthetic"\nrecords = {records}\nrecord_bytes = {RECORD_BYTES}\nseed = 3\n'
    )
    environ = {
        **os.environ,
        "HANDOVER_CONFIG": str(config),
        "HANDOVER_REDIS_URL": REDIS_URL,
        "HANDOVER_S3_BUCKET": bucket,
        "HANDOVER_S3_ENDPOINT_URL": s3_endpoint,
        "HANDOVER_DATA_DIR": str(tmp_path / "data"),
    }
    settings = Settings.load(environ)
    async with open_resources(settings, redis=redis) as resources:
        job = await Commands(resources).request_export(
            Actor("alice", staff=False), subject="alice", formats=["ndjson"]
        )
        peak_mb = run_worker(environ)
        done = await resources.store.get(job.id)
        assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
        assert done.connectors["telemetry"].records == records
        assert done.result is not None
        archive = tmp_path / f"export-{records}.zip"
        boto3.client("s3", endpoint_url=s3_endpoint).download_file(
            bucket, done.result.key, str(archive)
        )
        assert archive.stat().st_size == done.result.size
        body = archive.read_bytes()
        if done.connectors["telemetry"].parts[0].compressed_size <= HELD_OBJECT:
            # Read whole and written by the worker: both checksums its own.
            assert done.result.sha256 == hashlib.sha256(body).hexdigest()
        else:
            # Assembled by S3 from the staged object: S3's CRC-32 of the whole, no SHA-256.
            assert done.result.sha256 is None
        assert done.result.crc32 == f"{zlib.crc32(body):08x}"
        return peak_mb, archive, resources.signer


@pytest.mark.slow
async def test_large_export_streams_in_flat_memory(
    tmp_path: Path, s3_endpoint: str, bucket: str, redis: ArqRedis, capsys: Any
) -> None:
    small_mb, _, _ = await export_through_worker_process(
        tmp_path, s3_endpoint, bucket, redis, SMALL_RECORDS
    )
    large_mb, archive, signer = await export_through_worker_process(
        tmp_path, s3_endpoint, bucket, redis, LARGE_RECORDS
    )
    assert isinstance(signer, Signer)
    result = verify_archive(archive, [signer.public_key])
    assert result.ok, result.problems

    import zipfile

    with zipfile.ZipFile(archive) as opened:
        member = opened.getinfo("telemetry/telemetry.ndjson")
        expected = SyntheticConnector("t", records=LARGE_RECORDS, record_bytes=RECORD_BYTES, seed=3)
        rows = expected._rows(Subject("alice"))
        count = 0
        with opened.open(member) as lines:
            for line, row in zip(lines, rows, strict=True):
                if count % 50_000 == 0:
                    assert orjson.loads(line) == row
                count += 1
        assert count == LARGE_RECORDS
        input_mb = member.file_size / 2**20
    with capsys.disabled():
        print(
            f"\n[large export] {LARGE_RECORDS:,} records, {input_mb:.0f} MiB of NDJSON, "
            f"archive {archive.stat().st_size / 2**20:.0f} MiB; worker peak RSS "
            f"{large_mb} MB (small export of {SMALL_RECORDS:,} records: {small_mb} MB)"
        )
    assert large_mb < PEAK_RSS_LIMIT_MB
    assert large_mb - small_mb < 60
