"""Lifting a restriction (GDPR Art. 18(3)): only once the subject has been told.

Support asks for it (:meth:`jobs.commands.Commands.lift`) on a restriction that succeeded,
with the reason and from when, and the subject's address. The subject is sent the
``restriction_lifting`` notice at once, recorded on the restriction's own timeline; the
lift job runs no earlier than ``lifts_at``. At each processor it first checks that the
notice was sent (:func:`jobs.notices.notice_state`): while it is on its way, the run waits
on the notice's own schedule (:meth:`LiftPipeline.run_connector`: queued again every
:data:`NOTICE_POLL`, touching nothing and counting none of the connector's tries, for as
long as the notice is retried); skipped or given up, the run fails, saying the subject was
not told, and nothing is lifted. Then :meth:`~connectors.base.Connector.lift_restriction`
unblocks the subject's data where the processor restricted it.

A subject whose data was since erased is refused a lift: what an erasure kept is blocked
by law (Art. 17(3)), and a processor cannot tell those records from restricted ones. An
erasure counts from when it is asked for (still live) or once it ran at any processor
(:func:`blocking_erasure`); the check is made when the lift is asked for, and again by each
run just before it unblocks anything. Each lift tells the subject by a notice of its own
(keyed by the lift's id), so a lift whose notice could not go leaves room for a new one.
The lift's signed receipt (:mod:`jobs.archive.receipt`) names the restriction and its ground,
and when and by which message the subject was told.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from connectors.base import Connector
from connectors.errors import PermanentError, TransientError
from jobs.archive.receipt import build_receipt
from jobs.model import Job, JobKind, JobStatus, RunStatus, iso, utcnow
from jobs.notices import notice_state
from jobs.pipeline import LIVE, RUN_TASK, Outcome, Pipeline, run_task_id
from jobs.recipients import Recipients
from jobs.resources import Resources
from jobs.search import JobQuery

NOTICE = "restriction_lifting"
"""The notice the subject is sent before a restriction is lifted (Art. 18(3))."""

NOTICE_POLL = timedelta(seconds=5)
"""How often a lift run waiting for the subject's notice looks again."""

_NOT_RUN = frozenset({RunStatus.PENDING, RunStatus.UNIDENTIFIED, RunStatus.NOT_ASKED})
"""A connector run in these states touched nothing at its processor."""


async def blocking_erasure(resources: Resources, subject: str) -> Job | None:
    """An erasure of ``subject`` (not a dry run) that forbids lifting a restriction: one not
    ended (awaiting confirmation, in its grace period, running) or one that ran at any
    processor, whatever its end. What it kept is blocked by law (Art. 17(3))."""
    page = await resources.store.search(JobQuery(subject=subject, kind=JobKind.ERASURE, limit=200))
    for erasure in page.jobs:
        if erasure.erasure_options.dry_run:
            continue
        ran = any(run.status not in _NOT_RUN for run in erasure.connectors.values())
        if erasure.status in LIVE or ran:
            return erasure
    return None


class LiftPipeline(Pipeline):
    """The work of lift jobs."""

    kinds = (JobKind.LIFT,)

    async def run_connector(
        self, job_id: str, name: str, generation: int, attempt: int = 1
    ) -> None:
        """Run one processor's lift once the subject's notice is no longer on its way.

        While it is (``queued``: the notice is retried on its own schedule, up to its own
        limit), the run is queued again in :data:`NOTICE_POLL`, under an id of its own per
        period so that a duplicate delivery queues once; the run is not started, and no try
        counts. Then :meth:`work` finds the notice sent, or fails the run saying why not.
        """
        job = await self.resources.store.get(job_id)
        if not await self._notice_on_its_way(job, generation):
            await super().run_connector(job_id, name, generation, attempt)
            return
        poll = NOTICE_POLL.total_seconds()
        period = int((utcnow().timestamp() + poll) // poll)
        await self.resources.redis.enqueue_job(
            RUN_TASK,
            job.kind.value,
            job_id,
            name,
            generation,
            _job_id=f"{run_task_id(job, name)}|told?|{period}",
            _defer_by=NOTICE_POLL,
        )

    async def _notice_on_its_way(self, job: Job, generation: int) -> bool:
        """Whether the lift's run is due but its notice is still queued."""
        due = job.not_before is None or job.not_before <= utcnow()
        if job.generation != generation or job.status is not JobStatus.RUNNING or not due:
            return False
        restriction = await self.resources.store.get(job.lift_options.restriction)
        return await notice_state(self.resources, restriction, NOTICE, job.id) == "queued"

    async def work(self, connector: Connector, job: Job) -> Outcome:
        """Check the subject was told; then unblock at one processor."""
        restriction = await self.resources.store.get(job.lift_options.restriction)
        state = await notice_state(self.resources, restriction, NOTICE, job.id)
        if state in (None, "queued"):
            raise TransientError("the subject has not been told yet (Art. 18(3)): not lifted")
        if state != "sent":
            raise PermanentError(
                f"the subject could not be told (notice {state}, Art. 18(3)): not lifted"
            )
        erasure = await blocking_erasure(self.resources, job.subject)
        if erasure is not None:
            raise PermanentError(
                f"the subject's data is being or was erased (job {erasure.id}): what the law "
                "kept stays blocked (Art. 17(3)), and is not lifted"
            )
        report = await connector.lift_restriction(job.subject_view)
        return Outcome(
            records=sum(report.restricted.values()),
            report={
                "supported": report.supported,
                "lifted": dict(report.restricted),
                "note": report.note,
            },
        )

    async def complete(self, job: Job) -> Callable[[Job], None]:
        """Sign the receipt: what was lifted where, and when the subject was told."""
        resources = self.resources
        told = await self.told(job)
        recipients = await Recipients(resources).queue(job)
        await resources.keyring.publish(resources.signer)
        described = {name: connector.describe() for name, connector in resources.connectors.items()}
        receipt = build_receipt(
            job,
            connectors=described,
            signer=resources.signer,
            issued_at=utcnow(),
            told=told,
            recipients=recipients,
        )

        def record_receipt(job: Job) -> None:
            job.receipt = receipt

        return record_receipt

    async def told(self, job: Job) -> dict[str, Any]:
        """How the subject was told: this lift's notice's ``notice.sent`` on the restriction's
        timeline (an earlier lift's, failed or canceled, told of another)."""
        restriction_id = job.lift_options.restriction
        for event in await self.resources.store.events(restriction_id):
            ours = event.data.get("notice") == NOTICE and event.data.get("occasion") == job.id
            if event.type == "notice.sent" and ours:
                return {
                    "notice": NOTICE,
                    "sent_at": iso(event.at),
                    "message_id": event.data.get("message_id"),
                }
        raise PermanentError(f"no record that the subject was told of lifting {restriction_id}")
