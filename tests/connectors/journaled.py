"""What a connector's erasure journals, as a list of readable events."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from connectors.base import journaling
from connectors.reports import ErasureReport


@contextmanager
def journal_events() -> Iterator[list[str]]:
    """Within this block, each plan (``plan notes=3``), ``commit`` and ``withdraw`` an
    erasure journals, in order."""
    events: list[str] = []

    async def record(planned: ErasureReport) -> None:
        counts = " ".join(f"{e.dataset}={e.deleted}" for e in planned.datasets)
        events.append(f"plan {counts}")

    async def committed() -> None:
        events.append("commit")

    async def withdrawn() -> None:
        events.append("withdraw")

    with journaling(record, committed, withdrawn):
        yield events
