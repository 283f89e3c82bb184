"""Connectors for tests, demos and load measurements: Handover's fake of its own seam.

- :class:`MemoryConnector` answers with records it was given, and can be told to
  fail, to wait, or to wait for a barrier (to prove connectors run concurrently).
- :class:`SyntheticConnector` generates a telemetry history of any size on the fly,
  deterministic from its seed, without holding it in memory.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from connectors.base import Connector
from connectors.errors import PermanentError, TransientError
from connectors.items import Dataset, File, Item, Record, Subject


class MemoryConnector(Connector):
    """Serves ``records`` (``{subject: {dataset: [record, ...]}}``) and ``files``.

    ``fail`` makes every export raise a permanent error with that message
    (``fail_transient`` a transient one); ``delay`` waits that many seconds first.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"identification", "usage"})

    def __init__(
        self,
        name: str,
        *,
        records: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]] | None = None,
        files: Mapping[str, Mapping[str, bytes]] | None = None,
        datasets: Sequence[Mapping[str, Any]] = (),
        fail: str | None = None,
        fail_transient: str | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__(name)
        self.records = dict(records or {})
        self.files = dict(files or {})
        self.fail = fail
        self.fail_transient = fail_transient
        self.delay = delay
        declared = [Dataset(**d) for d in datasets]
        known = {d.name for d in declared}
        for per_subject in self.records.values():
            for dataset_name in per_subject:
                if dataset_name not in known:
                    declared.append(Dataset(dataset_name, "usage"))
                    known.add(dataset_name)
        if self.files and "files" not in known:
            declared.append(Dataset("files", "usage", "uploaded files"))
        self.datasets = tuple(declared)  # type: ignore[misc]

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise PermanentError(self.fail)
        if self.fail_transient:
            raise TransientError(self.fail_transient)
        for dataset, rows in self.records.get(subject.id, {}).items():
            for row in rows:
                yield Record(dataset, row)
        for path, content in self.files.get(subject.id, {}).items():
            yield File(path, content)


class SyntheticConnector(Connector):
    """Generates ``records`` telemetry readings of about ``record_bytes`` each, for any subject.

    The stream is deterministic for a given ``seed`` and subject, so a test can
    regenerate it to compare with an archive record for record.
    """

    categories: ClassVar[frozenset[str]] = frozenset({"telemetry"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "telemetry",
            "telemetry",
            "readings reported by the subject's devices",
            ("device_id", "seq", "ts", "temperature", "humidity", "firmware", "note"),
        ),
    )

    def __init__(
        self, name: str, *, records: int = 1000, record_bytes: int = 200, seed: int = 0
    ) -> None:
        super().__init__(name)
        if records < 0 or record_bytes < 64:
            raise PermanentError(f"connector {name!r}: records >= 0 and record_bytes >= 64")
        self.records = records
        self.record_bytes = record_bytes
        self.seed = seed

    def generate(self, subject: Subject) -> list[dict[str, Any]]:
        """The whole stream as a list, for tests that compare small exports."""
        return list(self._rows(subject))

    def _rows(self, subject: Subject) -> Any:
        rng = random.Random(f"{self.seed}:{subject.id}")
        padding = max(0, self.record_bytes - 150)
        text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=4096 + padding))
        for seq in range(self.records):
            yield {
                "device_id": f"dev-{rng.randrange(4)}",
                "seq": seq,
                "ts": 1_700_000_000 + seq * 60,
                "temperature": round(rng.uniform(-10, 35), 2),
                "humidity": round(rng.uniform(0, 100), 1),
                "firmware": "2.4.1",
                "note": text[(start := rng.randrange(4096)) : start + padding],
            }

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        for count, row in enumerate(self._rows(subject), 1):
            yield Record("telemetry", row)
            if count % 1000 == 0:
                await asyncio.sleep(0)
