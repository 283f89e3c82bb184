"""The erasure journal: what each attempt at a processor changed, written as it commits.

An erasure cannot be repeated to learn what it did: a second attempt finds the
rows gone and reports zero. So every attempt of an erasure run appends to a
durable journal (a Redis list per job and connector, AOF-persisted like the jobs):

- ``started`` before the connector is called;
- ``planned`` with a step's counts, from :meth:`connectors.base.Connector.before_commit`,
  before the connector commits that step (a connector that commits in steps plans
  each one after the previous commit returned);
- ``confirmed`` with the attempt's report, once :meth:`~connectors.base.Connector.erase`
  returned.

:func:`tally` turns the journal into what the erasure did across all its attempts.
A confirmed attempt counts as reported. Of an interrupted attempt (no
``confirmed``), every planned step but the last was committed (the connector went
on); the last one is judged by what the next attempt found in its datasets:

- nothing left in any of them: the step was committed (``committed``);
- at least as much as planned in each, and it was the attempt's only step: it was
  rolled back (``rolled back``);
- anything else cannot be told apart by counts (``unknown``): the counts leave it
  out and the receipt says so.

An interrupted attempt with no plan changed nothing if the connector journals its
commits (``journals_commits``); otherwise what it did is ``unknown``.

The erasure's finish also records each of Handover's own copies (an earlier
export's archive and staged objects) as it deletes it, so a finish that runs again
after a crash still lists the copies deleted the first time.

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

#: A journal outlives its job by this long, then Redis drops it.
JOURNAL_TTL_SECONDS = 90 * 24 * 3600
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

    def statement(self) -> dict[str, Any]:
        """The attempt as receipts state it."""
        text = {
            "committed": "its last step was committed: the next attempt found none of "
            "those records left, and they are counted",
            "rolled back": "its last step was not committed: the next attempt found those "
            "records still there",
            "unknown": "whether its last step was committed could not be established; "
            "the counts leave that step out",
        }[self.outcome]
        return {
            "attempt": self.attempt,
            "started_at": self.started_at,
            "outcome": self.outcome,
            "last_step_planned": self.planned,
            "note": f"attempt {self.attempt} was interrupted; {text}",
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
                interrupted.append(Interrupted(number, attempt.started_at, "unknown", {}))
            continue
        *certain, last = attempt.plans
        done.extend(certain)
        if not any(_changes(counts) for counts in last.values()):
            continue  # the step changed nothing, committed or not
        outcome: Outcome = "unknown" if later is None else _judge(last, not certain, later)
        if outcome == "committed":
            done.append(last)
        interrupted.append(Interrupted(number, attempt.started_at, outcome, last))
    return Tally(_sum(done), tuple(interrupted))


class ErasureJournal:
    """Appends to and reads the journal of each erasure run."""

    def __init__(self, redis: Any, namespace: str) -> None:
        self.redis = redis
        self.ns = namespace

    def _key(self, job_id: str, connector: str) -> str:
        return f"{self.ns}journal:{job_id}:{connector}"

    async def _append(self, job_id: str, connector: str, entry: dict[str, Any]) -> None:
        key = self._key(job_id, connector)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, orjson.dumps(entry))
            pipe.expire(key, JOURNAL_TTL_SECONDS)
            await pipe.execute()

    async def start(self, job_id: str, connector: str) -> str:
        """Record a new attempt; its id."""
        attempt = uuid.uuid4().hex
        await self._append(
            job_id, connector, {"attempt": attempt, "event": "started", "at": iso(utcnow())}
        )
        return attempt

    async def plan(self, job_id: str, connector: str, attempt: str, report: ErasureReport) -> None:
        """Record a step about to be committed."""
        entry = {"attempt": attempt, "event": "planned", "counts": counts_of(report)}
        await self._append(job_id, connector, entry)

    async def confirm(
        self, job_id: str, connector: str, attempt: str, report: ErasureReport
    ) -> None:
        """Record what the attempt reported once the connector returned."""
        entry = {"attempt": attempt, "event": "confirmed", "counts": counts_of(report)}
        await self._append(job_id, connector, entry)

    async def record_copy(self, job_id: str, copy: Mapping[str, Any]) -> None:
        """Record one of Handover's own copies of the subject's data, once deleted."""
        key = f"{self.ns}journal:{job_id}:handover-copies"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, orjson.dumps(copy))
            pipe.expire(key, JOURNAL_TTL_SECONDS)
            await pipe.execute()

    async def copies(self, job_id: str) -> list[dict[str, Any]]:
        """Handover's own copies recorded deleted so far, in order."""
        key = f"{self.ns}journal:{job_id}:handover-copies"
        return [orjson.loads(raw) for raw in await self.redis.lrange(key, 0, -1)]

    async def attempts(self, job_id: str, connector: str) -> list[Attempt]:
        """Every attempt recorded for the run, oldest first."""
        attempts: dict[str, Attempt] = {}
        for raw in await self.redis.lrange(self._key(job_id, connector), 0, -1):
            entry = orjson.loads(raw)
            if entry["event"] == "started":
                attempts[entry["attempt"]] = Attempt(entry["attempt"], entry["at"])
                continue
            attempt = attempts.get(entry["attempt"])
            if attempt is None:
                continue  # its start was written by a journal that has since expired
            if entry["event"] == "planned":
                attempt.plans.append(entry["counts"])
            elif entry["event"] == "confirmed":
                attempt.confirmed = entry["counts"]
        return list(attempts.values())
