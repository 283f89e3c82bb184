"""Metrics kept in Redis: every observation lands in exactly its buckets and its sum.

The rendered histogram is checked against a brute-force count of the same observations,
also after Redis lost its scripts (a restart), and beside counters on the same hash.
"""

from __future__ import annotations

import math

from arq.connections import ArqRedis

from jobs.metrics import DURATION_BUCKETS, Metrics

OBSERVED = [0.0, 0.05, 0.1, 0.3, 1.0, 2.5, 59.9, 60.0, 1000.0, 90000.0, -1.0]


def oracle(observed: list[float], series: str) -> list[str]:
    """The lines a Prometheus histogram of ``observed`` has, counted one by one."""
    lines = []
    for bound in (*DURATION_BUCKETS, math.inf):
        count = sum(1 for seconds in observed if max(seconds, 0.0) <= bound)
        key = "+Inf" if bound == math.inf else str(bound)
        lines.append(f'handover_job_duration_seconds_bucket{{{series},le="{key}"}} {count}')
    total = sum(max(seconds, 0.0) for seconds in observed)
    lines.append(f"handover_job_duration_seconds_sum{{{series}}} {total}")
    lines.append(f"handover_job_duration_seconds_count{{{series}}} {len(observed)}")
    return lines


async def test_each_observation_counts_in_exactly_its_buckets_and_sum(redis: ArqRedis) -> None:
    metrics = Metrics(redis, "handover:")
    for seconds in OBSERVED:
        await metrics.observe(
            "handover_job_duration_seconds", seconds, kind="export", status="succeeded"
        )
    await redis.script_flush()  # a restarted Redis has forgotten the script
    await metrics.observe("handover_job_duration_seconds", 0.7, kind="erasure", status="failed")
    text = await metrics.render({}, 0, 0)
    for line in oracle(OBSERVED, 'kind="export",status="succeeded"'):
        assert line in text.splitlines()
    for line in oracle([0.7], 'kind="erasure",status="failed"'):
        assert line in text.splitlines()
