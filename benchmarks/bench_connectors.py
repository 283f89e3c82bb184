"""Connector types that only the benchmarks use, registered like any third-party plugin.

:func:`install_plugin` writes a ``handover_bench`` distribution's metadata (an
``entry_points.txt`` in the ``handover.connectors`` group) into a directory; with
that directory and this one on ``PYTHONPATH``, an unmodified ``handover worker``
finds these types by name in its TOML configuration, as it would a plugin
installed with pip.

- ``bench-sleepy`` waits ``seconds``, then yields ``records`` small records: a
  processor whose API takes that long to answer.
- ``bench-replay`` yields ``records`` telemetry records replayed from a pool that
  ``SyntheticConnector`` generated once at start, in batches of ``REPLAY_BATCH`` rows
  (slices of the pool), so the export costs Handover's own work and almost nothing
  of the source's.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from connectors.base import Connector
from connectors.items import Batch, Dataset, Item, Record, Records, Subject
from connectors.reports import ErasureReport, RetentionRule
from connectors.testing import SyntheticConnector

DISTRIBUTION = "handover_bench"
ENTRY_POINTS = {
    "bench-sleepy": "bench_connectors:SleepyConnector",
    "bench-replay": "bench_connectors:ReplayConnector",
    # Handover's test connectors, which it does not publish as production types.
    "memory": "connectors.testing:MemoryConnector",
    "synthetic": "connectors.testing:SyntheticConnector",
}
REPLAY_POOL = 4096
REPLAY_BATCH = 1024  # divides REPLAY_POOL: every batch is one slice of the pool


class _ExportOnly(Connector):
    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        return ErasureReport()


class SleepyConnector(_ExportOnly):
    """Answers after ``seconds`` with ``records`` small records."""

    categories: ClassVar[frozenset[str]] = frozenset({"usage"})
    datasets: ClassVar[tuple[Dataset, ...]] = (Dataset("events", "usage", "what the API said"),)

    def __init__(self, name: str, *, seconds: float = 1.0, records: int = 3) -> None:
        super().__init__(name)
        self.seconds = seconds
        self.records = records

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        await asyncio.sleep(self.seconds)
        for number in range(self.records):
            yield Record("events", {"subject": subject.id, "number": number, "by": self.name})


class ReplayConnector(_ExportOnly):
    """``records`` telemetry readings replayed from a pool generated once."""

    categories = SyntheticConnector.categories
    datasets = SyntheticConnector.datasets

    def __init__(
        self,
        name: str,
        *,
        records: int = 1000,
        record_bytes: int = 200,
        seed: int = 0,
        entropy: float = 0.0,
    ) -> None:
        super().__init__(name)
        self.records = records
        source = SyntheticConnector(
            name, records=REPLAY_POOL, record_bytes=record_bytes, seed=seed, entropy=entropy
        )
        self.pool: list[dict[str, Any]] = source.generate(Subject("replay"))

    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        pool = self.pool
        for first in range(0, self.records, REPLAY_BATCH):
            start = first % REPLAY_POOL
            yield Records(
                "telemetry", pool[start : start + min(REPLAY_BATCH, self.records - first)]
            )
            await asyncio.sleep(0)


def install_plugin(directory: Path) -> str:
    """Register these types under ``directory``, for this process and its children.

    Returns the ``PYTHONPATH`` with which a child process finds them.
    """
    info = directory / f"{DISTRIBUTION}-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0\n")
    lines = [f"{name} = {target}" for name, target in ENTRY_POINTS.items()]
    (info / "entry_points.txt").write_text("[handover.connectors]\n" + "\n".join(lines) + "\n")
    if str(directory) not in sys.path:
        sys.path.append(str(directory))
    return f"{directory}:{Path(__file__).resolve().parent}"
