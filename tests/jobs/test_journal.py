"""What an erasure did across its attempts, from its journal (:func:`jobs.journal.tally`).

The crash scenarios themselves run on real PostgreSQL with real worker processes in
``tests/service/test_erasure_postgres.py``; these cover every rule of the judgement,
the receipt's datasets after a retry that found nothing, and Handover's own copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

from arq.connections import ArqRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from connectors.items import Subject
from connectors.reports import DatasetErasure, ErasureReport, RetentionRule
from connectors.testing import MemoryConnector
from jobs.journal import Attempt, Counts, ErasureJournal, tally
from tests.service.conftest import Api, ApiFactory, api_factory  # noqa: F401 (a fixture)


def counts(**datasets: int) -> Counts:
    return {name: {"deleted": n, "anonymised": 0} for name, n in datasets.items()}


def attempt(n: int, *plans: Counts, confirmed: Counts | None = None) -> Attempt:
    return Attempt(f"a{n}", f"2026-12-06T00:00:0{n}Z", list(plans), confirmed)


def test_confirmed_attempts_add_up() -> None:
    # The first attempt erased, then its verification failed; a retry erased the rest.
    result = tally(
        [
            attempt(1, counts(rows=5), confirmed=counts(rows=5)),
            attempt(2, counts(rows=2), confirmed=counts(rows=2)),
        ],
        journals_commits=True,
    )
    assert result.counts == {"rows": {"deleted": 7, "anonymised": 0}}
    assert result.interrupted == ()


def test_a_plan_whose_records_are_gone_was_committed() -> None:
    result = tally(
        [attempt(1, counts(rows=5, other=1)), attempt(2, counts(rows=0), confirmed=counts())],
        journals_commits=True,
    )
    assert result.counts == {
        "rows": {"deleted": 5, "anonymised": 0},
        "other": {"deleted": 1, "anonymised": 0},
    }
    assert [(i.attempt, i.outcome) for i in result.interrupted] == [(1, "committed")]


def test_an_only_step_whose_records_are_still_there_was_rolled_back() -> None:
    result = tally(
        [attempt(1, counts(rows=5)), attempt(2, counts(rows=6), confirmed=counts(rows=6))],
        journals_commits=True,
    )
    assert result.counts == {"rows": {"deleted": 6, "anonymised": 0}}
    assert [i.outcome for i in result.interrupted] == ["rolled back"]


def test_earlier_steps_count_and_an_ambiguous_last_step_is_left_out_and_named() -> None:
    # Three batches: the first two committed (the connector went on); of the third,
    # counts alone cannot tell, as the next attempt still found records.
    result = tally(
        [
            attempt(1, counts(rows=10), counts(rows=10), counts(rows=10)),
            attempt(2, counts(rows=4), confirmed=counts(rows=4)),
        ],
        journals_commits=True,
    )
    assert result.counts == {"rows": {"deleted": 24, "anonymised": 0}}
    (interrupted,) = result.interrupted
    assert interrupted.outcome == "unknown"
    statement = interrupted.statement()
    assert statement["last_step_planned"] == counts(rows=10)
    assert "could not be established" in statement["note"]


def test_an_attempt_that_planned_nothing_changed_nothing_if_the_connector_journals() -> None:
    history = [attempt(1), attempt(2, counts(rows=3), confirmed=counts(rows=3))]
    assert tally(history, journals_commits=True).interrupted == ()
    # A connector that does not journal may have changed anything: the receipt says so.
    unjournaled = tally(history, journals_commits=False)
    assert [i.outcome for i in unjournaled.interrupted] == ["unknown"]
    assert unjournaled.counts == {"rows": {"deleted": 3, "anonymised": 0}}


def test_an_interruption_is_judged_by_the_next_attempt_that_found_anything() -> None:
    # Attempt 2 died before planning; attempt 3's findings judge attempt 1.
    result = tally(
        [attempt(1, counts(rows=5)), attempt(2), attempt(3, counts(), confirmed=counts())],
        journals_commits=True,
    )
    assert result.counts["rows"]["deleted"] == 5
    assert [i.outcome for i in result.interrupted] == ["committed"]


def test_a_plan_of_nothing_is_not_an_interruption() -> None:
    result = tally(
        [attempt(1, counts(rows=0)), attempt(2, confirmed=counts(rows=0))], journals_commits=True
    )
    assert result.interrupted == ()


def test_an_attempt_that_failed_with_a_known_error_is_named_as_failed() -> None:
    failed = attempt(1)
    failed.failed = "transient"
    history = [failed, attempt(2, counts(rows=3), confirmed=counts(rows=3))]
    # A journaling connector that failed before planning changed nothing: no entry.
    assert tally(history, journals_commits=True).interrupted == ()
    (entry,) = tally(history, journals_commits=False).interrupted
    statement = entry.statement()
    assert statement["ended"] == "failed: transient"
    assert statement["note"] == (
        "attempt 1 failed (transient error); what it changed at the processor could not be "
        "established"
    )


class CommitsThenRedisFails(MemoryConnector):
    """Journals its erasure, commits it, then Handover's Redis fails (once): the retry
    finds nothing left and reports no dataset at all."""

    journals_commits: ClassVar[bool] = True
    #: Whether it marks its commit (``after_commit``) before Redis fails.
    marks: ClassVar[bool] = False
    #: The subject's rows that arrive after the commit, before Redis fails.
    arriving: ClassVar[Mapping[str, list[dict[str, Any]]] | None] = None
    failed = False

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        if dry_run:
            return await super().erase(subject, dry_run=True, retention=retention)
        planned = await super().erase(subject, dry_run=True, retention=retention)
        if planned.datasets:
            await self.before_commit(planned)
        report = await super().erase(subject, dry_run=False, retention=retention)
        if self.marks and planned.datasets:
            await self.after_commit()
        if not self.failed:
            self.failed = True
            if self.arriving is not None:
                self.records[subject.id] = dict(self.arriving)
            raise RedisConnectionError("Redis failed right after the commit (injected)")
        return report


async def erased(api: Api) -> dict[str, Any]:
    """Alice's erasure, asked, confirmed by an admin and succeeded: the job as she sees it."""
    status, _, job = await api.request("POST", "/v1/erasures", json={})
    assert status == 202, job
    assert (
        await api.request("POST", f"/v1/jobs/{job['id']}/confirm", sub="root", roles=("admin",))
    )[0] == 200
    done: dict[str, Any] = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    return done


async def test_a_receipt_counts_datasets_only_an_earlier_attempt_found(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    crm = CommitsThenRedisFails("crm", records={"alice": {"contacts": [{"id": 1}, {"id": 2}]}})
    api = await api_factory({"crm": crm}, erasure_grace=timedelta(0))
    done = await erased(api)
    report = done["connectors"]["crm"]["report"]
    assert [(e["dataset"], e["deleted"]) for e in report["datasets"]] == [("contacts", 2)]
    assert [i["outcome"] for i in report["interrupted_attempts"]] == ["committed"]
    assert done["connectors"]["crm"]["records"] == 2


class CommitsThenRowsReturn(CommitsThenRedisFails):
    """Journals its erasure and marks it committed; then, before the attempt ends, as many
    new rows for the subject arrive as it deleted, and Handover's Redis fails (once)."""

    marks: ClassVar[bool] = True
    arriving: ClassVar[Mapping[str, list[dict[str, Any]]] | None] = {
        "contacts": [{"id": 3}, {"id": 4}]
    }


async def test_a_step_recorded_committed_counts_though_as_many_rows_came_back(
    api_factory: ApiFactory,  # noqa: F811
) -> None:
    # By counts alone, an only step whose rows are all there again looks rolled back.
    crm = CommitsThenRowsReturn("crm", records={"alice": {"contacts": [{"id": 1}, {"id": 2}]}})
    api = await api_factory({"crm": crm}, erasure_grace=timedelta(0))
    done = await erased(api)
    report = done["connectors"]["crm"]["report"]
    # Rows 1 and 2 by the first attempt, 3 and 4 by the retry.
    assert [(e["dataset"], e["deleted"]) for e in report["datasets"]] == [("contacts", 4)]
    (interrupted,) = report["interrupted_attempts"]
    assert interrupted["outcome"] == "committed"
    assert "as recorded when the commit returned" in interrupted["note"]


async def test_a_journal_without_the_committed_mark_is_judged_by_counts(redis: ArqRedis) -> None:
    # Entries as journals written before the mark existed hold them.
    journal = ErasureJournal(redis, "handover:")
    first = await journal.start("J", "crm")
    await journal.plan("J", "crm", first, ErasureReport((DatasetErasure("rows", deleted=2),)))
    second = await journal.start("J", "crm")
    found = ErasureReport((DatasetErasure("rows", deleted=2),))
    await journal.plan("J", "crm", second, found)
    await journal.confirm("J", "crm", second, found)
    unmarked = tally(await journal.attempts("J", "crm"), journals_commits=True)
    assert [i.outcome for i in unmarked.interrupted] == ["rolled back"]
    assert unmarked.counts == {"rows": {"deleted": 2, "anonymised": 0}}
    # The same attempts, the first one's step marked committed when its commit returned.
    await redis.delete("handover:journal:J:crm")
    first = await journal.start("J", "crm")
    await journal.plan("J", "crm", first, ErasureReport((DatasetErasure("rows", deleted=2),)))
    await journal.commit("J", "crm", first)
    second = await journal.start("J", "crm")
    await journal.plan("J", "crm", second, found)
    await journal.confirm("J", "crm", second, found)
    marked = tally(await journal.attempts("J", "crm"), journals_commits=True)
    assert [(i.outcome, i.recorded) for i in marked.interrupted] == [("committed", True)]
    assert marked.counts == {"rows": {"deleted": 4, "anonymised": 0}}


async def test_a_withdrawn_step_is_not_counted_after_an_interrupted_attempt(
    redis: ArqRedis,
) -> None:
    # The notes' DELETE answered "none held" (withdrawn); the worker died during the next
    # step's call; the next attempt found nothing left.
    journal = ErasureJournal(redis, "handover:")
    first = await journal.start("J", "helpdesk")
    await journal.plan("J", "helpdesk", first, ErasureReport((DatasetErasure("notes", deleted=3),)))
    await journal.withdraw("J", "helpdesk", first)
    tickets = ErasureReport((DatasetErasure("tickets", deleted=5),))
    await journal.plan("J", "helpdesk", first, tickets)
    second = await journal.start("J", "helpdesk")
    nothing = ErasureReport((DatasetErasure("tickets"), DatasetErasure("notes")))
    await journal.confirm("J", "helpdesk", second, nothing)
    total = tally(await journal.attempts("J", "helpdesk"), journals_commits=True)
    assert total.counts == {
        "tickets": {"deleted": 5, "anonymised": 0},
        "notes": {"deleted": 0, "anonymised": 0},
    }
    assert [(i.outcome, i.planned) for i in total.interrupted] == [
        ("committed", {"tickets": {"deleted": 5, "anonymised": 0}})
    ]


async def test_own_copies_planned_but_not_recorded_done_say_so(redis: ArqRedis) -> None:
    journal = ErasureJournal(redis, "handover:")
    first = {"job": "E1", "kind": "export", "archive_deleted": True, "status": "expired"}
    second = {"job": "E2", "kind": "export", "archive_deleted": False, "status": "canceled"}
    await journal.plan_copy("J", first)
    await journal.copy_done("J", {**first, "staged_objects_deleted": 3})
    await journal.plan_copy("J", second)  # the finish died here
    copies = await journal.copies("J")
    assert copies["E1"]["staged_objects_deleted"] == 3 and "note" not in copies["E1"]
    assert copies["E2"]["staged_objects_deleted"] is None
    assert "was not recorded" in copies["E2"]["note"]
