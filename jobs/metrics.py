"""Prometheus metrics kept in Redis, so any API process can serve them for every worker.

Counters and histograms are Redis hashes updated with ``HINCRBY``, a histogram's
observation by one Lua script (:data:`_OBSERVE`: its buckets and sum in one step, one
round trip); gauges are read at scrape time from the job store's counts and indexes. ``/metrics``
renders them in the Prometheus text format (version 0.0.4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 86400)

HISTOGRAMS = {
    "handover_job_duration_seconds": "Time from a job's receipt to its end, by kind and status.",
    "handover_connector_duration_seconds": "Time one connector's share of a job took.",
}
COUNTERS = {
    "handover_connector_errors_total": "Connector failures, by connector and error class.",
    "handover_archive_bytes_total": "Bytes of export archives written.",
    "handover_lifecycle_decisions_total": (
        "Deadlines extended, requests refused and subjects asked for information, by "
        "decision and jurisdiction."
    ),
    "handover_jobs_purged_total": (
        "Finished jobs deleted after HANDOVER_RECORD_RETENTION, by kind and the status they "
        "ended in (handover_jobs still counts them)."
    ),
}


#: One observation of a histogram. KEYS[1]: its hash; ARGV[1]: the series' sum field,
#: ARGV[2]: the seconds observed, then the bucket fields the observation falls in.
_OBSERVE = """
for i = 3, #ARGV do redis.call('HINCRBY', KEYS[1], ARGV[i], 1) end
redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1], ARGV[2])
"""


def _labels(labels: Mapping[str, str]) -> str:
    inner = ",".join(
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for key, value in sorted(labels.items())
    )
    return "{" + inner + "}" if inner else ""


class Metrics:
    """Records what workers do; renders everything for ``/metrics``."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        self.redis: Any = redis
        self.ns = f"{namespace}metrics:"
        self._observe = self.redis.register_script(_OBSERVE)

    async def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Add one observation to histogram ``name``."""
        series = _labels(labels)
        buckets = [f"{series}|{bound}" for bound in DURATION_BUCKETS if seconds <= bound]
        await self._observe(
            keys=[f"{self.ns}{name}"],
            args=[f"{series}|sum", repr(max(seconds, 0.0)), *buckets, f"{series}|+Inf"],
        )

    async def count(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` to counter ``name``."""
        await self.redis.hincrby(f"{self.ns}{name}", _labels(labels), amount)

    def queue_count(self, pipe: Any, name: str, amount: int = 1, **labels: str) -> None:
        """Queue adding ``amount`` to counter ``name`` on ``pipe``, in the caller's transaction."""
        pipe.hincrby(f"{self.ns}{name}", _labels(labels), amount)

    async def render(
        self, counts: Mapping[str, Mapping[str, int]], overdue: int, queue_depth: int
    ) -> str:
        """Every metric, in the Prometheus text format."""
        lines = [
            "# HELP handover_jobs Jobs by kind and status (purged ones as they ended).",
            "# TYPE handover_jobs gauge",
        ]
        for kind, statuses in sorted(counts.items()):
            for status, number in sorted(statuses.items()):
                lines.append(f"handover_jobs{_labels({'kind': kind, 'status': status})} {number}")
        lines += [
            "# HELP handover_jobs_overdue Live jobs past their legal deadline.",
            "# TYPE handover_jobs_overdue gauge",
            f"handover_jobs_overdue {overdue}",
            "# HELP handover_queue_depth Tasks waiting in the work queue.",
            "# TYPE handover_queue_depth gauge",
            f"handover_queue_depth {queue_depth}",
        ]
        for name, text in COUNTERS.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            raw = await self.redis.hgetall(f"{self.ns}{name}")
            for series, value in sorted(raw.items()):
                lines.append(f"{name}{series.decode()} {int(value)}")
            if not raw and name == "handover_archive_bytes_total":
                lines.append(f"{name} 0")
        for name, text in HISTOGRAMS.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            raw = await self.redis.hgetall(f"{self.ns}{name}")
            lines += _histogram_lines(name, {k.decode(): v.decode() for k, v in raw.items()})
        return "\n".join(lines) + "\n"


def _histogram_lines(name: str, fields: Mapping[str, str]) -> list[str]:
    series = sorted({field.rsplit("|", 1)[0] for field in fields})
    lines = []
    for labels in series:
        inner = labels[1:-1] if labels else ""
        for bound in (*DURATION_BUCKETS, math.inf):
            key = "+Inf" if bound == math.inf else str(bound)
            le = f'le="{key}"'
            joined = "{" + (f"{inner}," if inner else "") + le + "}"
            lines.append(f"{name}_bucket{joined} {int(fields.get(f'{labels}|{key}', 0))}")
        lines.append(f"{name}_sum{labels} {float(fields.get(f'{labels}|sum', 0))}")
        lines.append(f"{name}_count{labels} {int(fields.get(f'{labels}|+Inf', 0))}")
    return lines


def seconds_between(start: datetime | None, end: datetime | None) -> float:
    """Elapsed seconds, zero when either end is unknown."""
    if start is None or end is None:
        return 0.0
    return max((end - start).total_seconds(), 0.0)
