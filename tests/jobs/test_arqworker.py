"""PatientWorker's claims: one it could not confirm is given back once Redis answers.

The restarts themselves are in ``tests/jobs/test_redis_restart.py`` (worker processes,
a Redis killed under load); this covers the one step a restart cannot hit on purpose:
``EXEC``'s reply lost, and the read-back of the claim lost too.
"""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from jobs.arqworker import PatientWorker
from jobs.queue import QUEUE_NAME


async def noop(ctx: dict[str, object]) -> None:
    return None


async def test_an_unconfirmed_claim_of_its_own_is_given_back_and_no_other(
    redis: ArqRedis,
) -> None:
    worker = PatientWorker(functions=[noop], redis_pool=redis, queue_name=QUEUE_NAME)
    ours, theirs = in_progress_key_prefix + "job-a", in_progress_key_prefix + "job-b"
    await redis.set(ours, worker._claim_value, px=3_600_000)
    await redis.set(theirs, b"handover-worker-someone-else", px=3_600_000)
    worker._unsettled_claims.update({"job-a", "job-b"})

    await worker._settle_claims()

    assert await redis.exists(ours) == 0  # the job can be claimed again at once
    assert await redis.get(theirs) == b"handover-worker-someone-else"
    assert worker._unsettled_claims == set()
