"""The archive index's preview: what gathering it costs on 1 GB of telemetry, beside staging.

1 GB of NDJSON telemetry rows (``device_id``, ``ts``, ``temperature``, ``humidity``; 20
devices, rows grouped by device as a database's cursor gives them) is staged in one
thread with no I/O (:class:`jobs.archive.staging.Stager`: render, checksum, deflate),
once for a dataset declared without a series and once with one; then the preview's
:class:`jobs.archive.preview.Gatherer` alone reads the same rows, both ways. The same
500 batches of 2,000 rows are fed again and again, so generating rows costs nothing.

Run alone: ``.venv/bin/python benchmarks/preview_bench.py [--gb 1]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from connectors.items import Dataset, Series
from jobs.archive.preview import Gatherer
from jobs.archive.staging import Stager

BATCH = 2000
DEVICES = 20
ROWS_PER_DEVICE = 50_000
FIELDS = ("device_id", "ts", "temperature", "humidity")
SERIES = Series("ts", ("temperature", "humidity"), "device_id")


def batches() -> list[list[dict[str, Any]]]:
    """One pass of rows: every device's readings, in batches of :data:`BATCH`."""
    rng = random.Random(1)
    out: list[list[dict[str, Any]]] = []
    for device in range(DEVICES):
        rows = [
            {
                "device_id": f"device-{device:03d}",
                "ts": 1_672_531_200 + reading * 60,
                "temperature": round(rng.gauss(21, 2), 2),
                "humidity": round(rng.uniform(30, 60), 1),
            }
            for reading in range(ROWS_PER_DEVICE)
        ]
        out += [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    return out


def staged(dataset: Dataset, passes: int, pass_rows: Sequence[Sequence[Mapping[str, Any]]]) -> str:
    stager = Stager("devices", lambda name: dataset, ["ndjson"])
    start = time.perf_counter()
    for _ in range(passes):
        for rows in pass_rows:
            stager.add_rows("telemetry", rows)
    _, parts = stager.finish()
    took = time.perf_counter() - start
    part = parts[0]
    preview = len(orjson.dumps(stager.previews))
    return (
        f"{part.bytes / 1e9:.2f} GB, {part.records:,} rows staged in {took:.1f} s "
        f"({part.bytes / 1e6 / took:.0f} MB/s); preview {preview:,} bytes"
    )


def gathered(
    dataset: Dataset, passes: int, pass_rows: Sequence[Sequence[Mapping[str, Any]]]
) -> str:
    gatherer = Gatherer(dataset)
    start = time.perf_counter()
    for _ in range(passes):
        for rows in pass_rows:
            gatherer.add(rows)
    gatherer.result()
    return f"gathered alone in {time.perf_counter() - start:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="NDJSON gigabytes to stage")
    args = parser.parse_args()
    pass_rows = batches()
    pass_bytes = sum(len(orjson.dumps(row)) + 1 for rows in pass_rows for row in rows)
    passes = max(1, round(args.gb * 1e9 / pass_bytes))
    for label, dataset in (
        ("without series", Dataset("telemetry", "telemetry", fields=FIELDS)),
        ("with series", Dataset("telemetry", "telemetry", fields=FIELDS, series=SERIES)),
    ):
        stage = staged(dataset, passes, pass_rows)
        print(f"{label:15} {stage}; {gathered(dataset, passes, pass_rows)}")


if __name__ == "__main__":
    main()
