"""The erasure journal: what each attempt at a processor changed, written as it commits.

An erasure cannot be repeated to learn what it did: a second attempt finds the
rows gone and reports zero. So every attempt of an erasure run appends to a
durable journal (a Redis list per job and connector, AOF-persisted like the jobs):

- ``started`` before the connector is called;
- ``planned`` with a step's counts, from :meth:`connectors.base.Connector.before_commit`,
  before the connector commits that step (a connector that commits in steps plans
  each one after the previous commit returned);
- ``committed``, from :meth:`connectors.base.Connector.after_commit`, as soon as that
  step's commit returned; or ``withdrawn``, from
  :meth:`connectors.base.Connector.withdraw`, when the step was not committed and the
  connector went on (the processor answered that it held none of it): the step's plan
  is dropped, as if it had never been made;
- ``confirmed`` with the attempt's report, once :meth:`~connectors.base.Connector.erase`
  returned; or ``failed`` with the error's class, when it raised one.

:func:`tally` turns the journal into what the erasure did across all its attempts.
A confirmed attempt counts as reported. Of an interrupted attempt (no
``confirmed``), every planned step but the last, withdrawn ones aside, was committed
(the connector went on); so was the last one if it is marked ``committed``
(``recorded``). Otherwise, the process died between the plan and the mark (or the
connector does not mark its commits, as journals written before the mark existed), and
the last step is judged by what the next attempt found in its datasets:

- nothing left in any of them: the step was committed (``committed``);
- at least as much as planned in each, and it was the attempt's only step: it was
  rolled back (``rolled back``);
- anything else cannot be told apart by counts (``unknown``): the counts leave it
  out and the receipt says so.

An interrupted or failed attempt with no plan changed nothing if the connector
journals its commits (``journals_commits``); otherwise what it did is ``unknown``.
An attempt that failed with a known error is named as failed, not interrupted.

The erasure's finish also journals each of Handover's own copies (an earlier
export's archive and staged objects): ``planned`` before it deletes anything, ``done``
with what it deleted, so a finish that runs again after a crash still lists every
copy, and says where what it deleted was not recorded.

Entries hold dataset names, job ids and counts only, never personal data.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from connectors.reports import ErasureReport
from jobs.model import iso, utcnow

#: A journal is kept this long after its last entry (longer than any request may take:
#: a month, extended by two), then Redis drops it; purging a job's records drops it too.
JOURNAL_TTL_SECONDS = 400 * 24 * 3600
#: The counts an attempt adds up; ``retained`` is a state (rows kept now), not an event.
ADDITIVE = ("deleted", "anonymised")

Counts = dict[str, dict[str, int]]
Outcome = Literal["committed", "rolled back", "unknown"]


def counts_of(report: ErasureReport) -> Counts:
    """A report's additive counts, by dataset."""
    return {
        entry.dataset: {name: getattr(entry, name) for name in ADDITIVE}
        for entry in report.datasets
    }


@dataclass
class Attempt:
    """One attempt as the journal recorded it."""

    id: str
    started_at: str
    plans: list[Counts] = field(default_factory=list)
    confirmed: Counts | None = None
    #: The class of the error it ended with (``transient``, ``permanent``…), if any.
    failed: str | None = None
    #: Whether the last planned step was recorded committed once its commit returned.
    last_committed: bool = False

    @property
    def findings(self) -> Counts | None:
        """What the attempt found to change: its report, or failing that its plans' sum."""
        if self.confirmed is not None:
            return self.confirmed
        return _sum(self.plans) if self.plans else None


@dataclass(frozen=True)
class Interrupted:
    """An attempt that never confirmed, and what became of its last step."""

    attempt: int
    started_at: str
    outcome: Outcome
    planned: Counts
    failed: str | None = None
    #: The outcome was recorded when the commit returned, not judged from findings.
    recorded: bool = False

    def statement(self) -> dict[str, Any]:
        """The attempt as receipts state it."""
        if not self.planned:
            text = "what it changed at the processor could not be established"
        elif self.recorded:
            text = "its last step was committed, as recorded when the commit returned, and "
            text += "it is counted"
        else:
            text = {
                "committed": "its last step was committed: the next attempt found none of "
                "those records left, and they are counted",
                "rolled back": "its last step was not committed: the next attempt found "
                "those records still there",
                "unknown": "whether its last step was committed could not be established; "
                "the counts leave that step out",
            }[self.outcome]
        ended = f"failed ({self.failed} error)" if self.failed else "was interrupted"
        return {
            "attempt": self.attempt,
            "started_at": self.started_at,
            "ended": f"failed: {self.failed}" if self.failed else "interrupted",
            "outcome": self.outcome,
            "last_step_planned": self.planned,
            "note": f"attempt {self.attempt} {ended}; {text}",
        }


@dataclass(frozen=True)
class Tally:
    """What an erasure run did at one processor, across all its attempts."""

    counts: Counts
    interrupted: tuple[Interrupted, ...]


def _sum(parts: Sequence[Counts]) -> Counts:
    total: Counts = {}
    for part in parts:
        for dataset, counts in part.items():
            into = total.setdefault(dataset, dict.fromkeys(ADDITIVE, 0))
            for name in ADDITIVE:
                into[name] += counts.get(name, 0)
    return total


def _changes(counts: Mapping[str, int]) -> int:
    return sum(counts.get(name, 0) for name in ADDITIVE)


def _judge(last: Counts, only_step: bool, found: Counts) -> Outcome:
    """Whether ``last`` was committed, from what the next attempt ``found``."""
    planned = [dataset for dataset, counts in last.items() if _changes(counts)]
    left = [_changes(found.get(dataset, {})) for dataset in planned]
    if all(n == 0 for n in left):
        return "committed"
    if only_step and all(
        n >= _changes(last[dataset]) for dataset, n in zip(planned, left, strict=True)
    ):
        return "rolled back"
    return "unknown"


def tally(attempts: Sequence[Attempt], *, journals_commits: bool) -> Tally:
    """What the attempts did, in order (see the module doc)."""
    done: list[Counts] = []
    interrupted: list[Interrupted] = []
    for number, attempt in enumerate(attempts, start=1):
        if attempt.confirmed is not None:
            done.append(attempt.confirmed)
            continue
        later = next((a.findings for a in attempts[number:] if a.findings is not None), None)
        if not attempt.plans:
            if not journals_commits:
                interrupted.append(
                    Interrupted(number, attempt.started_at, "unknown", {}, attempt.failed)
                )
            continue
        *certain, last = attempt.plans
        done.extend(certain)
        if not any(_changes(counts) for counts in last.values()):
            continue  # the step changed nothing, committed or not
        outcome: Outcome = "committed"
        if not attempt.last_committed:
            outcome = "unknown" if later is None else _judge(last, not certain, later)
        if outcome == "committed":
            done.append(last)
        interrupted.append(
            Interrupted(
                number, attempt.started_at, outcome, last, attempt.failed, attempt.last_committed
            )
        )
    return Tally(_sum(done), tuple(interrupted))


class ErasureJournal:
    """Appends to and reads the journal of each erasure run."""

    def __init__(self, redis: Any, namespace: str) -> None:
        self.redis = redis
        self.ns = namespace

    def _key(self, job_id: str, connector: str) -> str:
        return f"{self.ns}journal:{job_id}:{connector}"

    def _copies_key(self, job_id: str) -> str:
        return f"{self.ns}journal-copies:{job_id}"

    async def _append(self, key: str, entry: Mapping[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, orjson.dumps(entry))
            pipe.expire(key, JOURNAL_TTL_SECONDS)
            await pipe.execute()

    async def start(self, job_id: str, connector: str) -> str:
        """Record a new attempt; its id."""
        attempt = uuid.uuid4().hex
        entry = {"attempt": attempt, "event": "started", "at": iso(utcnow())}
        await self._append(self._key(job_id, connector), entry)
        return attempt

    async def plan(self, job_id: str, connector: str, attempt: str, report: ErasureReport) -> None:
        """Record a step about to be committed."""
        entry = {"attempt": attempt, "event": "planned", "counts": counts_of(report)}
        await self._append(self._key(job_id, connector), entry)

    async def commit(self, job_id: str, connector: str, attempt: str) -> None:
        """Record that the step last planned was committed."""
        entry = {"attempt": attempt, "event": "committed"}
        await self._append(self._key(job_id, connector), entry)

    async def withdraw(self, job_id: str, connector: str, attempt: str) -> None:
        """Record that the step last planned was not committed (and is not counted)."""
        entry = {"attempt": attempt, "event": "withdrawn"}
        await self._append(self._key(job_id, connector), entry)

    async def confirm(
        self, job_id: str, connector: str, attempt: str, report: ErasureReport
    ) -> None:
        """Record what the attempt reported once the connector returned."""
        entry = {"attempt": attempt, "event": "confirmed", "counts": counts_of(report)}
        await self._append(self._key(job_id, connector), entry)

    async def fail(self, job_id: str, connector: str, attempt: str, error_class: str) -> None:
        """Record that the attempt ended with an error of ``error_class``."""
        entry = {"attempt": attempt, "event": "failed", "error_class": error_class}
        await self._append(self._key(job_id, connector), entry)

    async def plan_copy(self, job_id: str, copy: Mapping[str, Any]) -> None:
        """Record one of Handover's own copies before deleting anything of it."""
        await self._append(self._copies_key(job_id), {"event": "planned", "copy": copy})

    async def copy_done(self, job_id: str, copy: Mapping[str, Any]) -> None:
        """Record what was deleted of one of Handover's own copies, and its job's status."""
        await self._append(self._copies_key(job_id), {"event": "done", "copy": copy})

    async def copies(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Handover's own copies journaled so far, by export job id, in order.

        A copy planned but never recorded done was being deleted when a finish was
        interrupted: its staged objects' count is not known (``None``), and it says so.
        """
        copies: dict[str, dict[str, Any]] = {}
        for raw in await self.redis.lrange(self._copies_key(job_id), 0, -1):
            entry = orjson.loads(raw)
            copy = entry["copy"]
            if entry["event"] == "done":
                copies[copy["job"]] = copy
            elif copy["job"] not in copies:
                copies[copy["job"]] = {
                    **copy,
                    "staged_objects_deleted": None,
                    "note": "the finish was interrupted while deleting this copy; how many "
                    "staged objects it deleted was not recorded",
                }
        return copies

    async def attempts(self, job_id: str, connector: str) -> list[Attempt]:
        """Every attempt recorded for the run, oldest first (withdrawn plans left out)."""
        attempts: dict[str, Attempt] = {}
        marks: dict[str, list[bool]] = {}  # by attempt: whether each plan is marked committed
        for raw in await self.redis.lrange(self._key(job_id, connector), 0, -1):
            entry = orjson.loads(raw)
            if entry["event"] == "started":
                attempts[entry["attempt"]] = Attempt(entry["attempt"], entry["at"])
                continue
            attempt = attempts.get(entry["attempt"])
            if attempt is None:
                continue  # its start was written by a journal that has since expired
            marked = marks.setdefault(attempt.id, [])
            if entry["event"] == "planned":
                attempt.plans.append(entry["counts"])
                marked.append(False)
            elif entry["event"] == "committed" and marked:
                marked[-1] = True
            elif entry["event"] == "withdrawn" and marked and not marked[-1]:
                attempt.plans.pop()
                marked.pop()
            elif entry["event"] == "confirmed":
                attempt.confirmed = entry["counts"]
            elif entry["event"] == "failed":
                attempt.failed = entry["error_class"]
            attempt.last_committed = bool(marked) and marked[-1]
        return list(attempts.values())
