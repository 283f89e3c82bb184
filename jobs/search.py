"""Job search: the jobs a query matches, one page at a time, found by walking the store's indexes.

:meth:`JobStore.search <jobs.store.JobStore.search>` is the entry point; :class:`JobSearch`
walks the indexes :mod:`jobs.store` keeps, never the key space. One index drives the walk:

- a deadline query (``overdue``, ``at_risk``, ``due_before``) walks ``idx:open``, the live
  jobs whose clock runs (not one stopped while the subject is asked for information,
  :attr:`~jobs.model.Job.open_due`) by due date, soonest first;
- ``sort="due"`` walks ``idx:due``, every job by due date, soonest first;
- any other query walks the smallest of its filter indexes (status, kind, subject,
  connector), or ``idx:created`` when it has none, newest first; its creation range
  bounds the walk.

A job walked is kept when it is in every other filter index, is of none of the query's
``hidden_kinds`` and, on a walk by due date,
was created in the query's range and (``at_risk``) has under a quarter of its time left
(:data:`~jobs.model.AT_RISK_SHARE`). A page's cursor names the last job seen (its score
and id), so pages stay stable while new jobs arrive. A walk gives up after
:data:`SEARCH_SCAN_LIMIT` jobs even when the page is not full; its cursor goes on from
there. A cursor this service did not make is a :class:`BadCursor`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs.model import AT_RISK_SHARE, Job, JobKind, JobStatus, epoch_ms

#: The most jobs one search walks past before it returns what it has found.
SEARCH_SCAN_LIMIT = 20_000

#: Kinds a subject never sees among their own jobs: a disclosure goes to an authority, and
#: the subject learns of it only by its notice (:mod:`jobs.disclosures`).
HIDDEN_FROM_SUBJECTS = frozenset({JobKind.DISCLOSURE})

#: A job's place in the walk: its score in the driving index and its id.
Position = tuple[float, str]


@dataclass(frozen=True)
class JobQuery:
    """What support staff (or a subject, for their own jobs) look for."""

    kind: JobKind | None = None
    status: JobStatus | None = None
    subject: str | None = None
    connector: str | None = None
    overdue: bool = False
    at_risk: bool = False
    due_before: datetime | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: str = "created"
    limit: int = 50
    cursor: str | None = None
    #: Kinds left out of the answer whatever else matches: a subject's own search never
    #: shows the disclosures about them (:data:`HIDDEN_FROM_SUBJECTS`).
    hidden_kinds: frozenset[JobKind] = frozenset()


@dataclass(frozen=True)
class JobPage:
    """One page of a search; ``next_cursor`` is ``None`` on the last page."""

    jobs: list[Job]
    next_cursor: str | None


class BadCursor(ValueError):
    """A search cursor that this service did not make."""


class JobSearch:
    """Finds the jobs a query matches in the store's indexes; holds no state of one search."""

    def __init__(self, redis: Redis, namespace: str) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.ns = namespace

    async def find(self, query: JobQuery, now: datetime) -> tuple[list[str], str | None]:
        """The page's job ids, in order, and the cursor of the next page (``None`` on the last)."""
        walk = await self._plan(query, now)
        if query.cursor:
            walk.resume_after(_decode_cursor(query.cursor))
        found = await self._collect(walk, query, now)
        page = [job_id for _, job_id in found[: query.limit]]
        return page, _next_cursor(found, query.limit, walk)

    async def _plan(self, query: JobQuery, now: datetime) -> _Walk:
        """The index that drives the walk, its order, its score range and the other filters."""
        filters = self._filters(query)
        checks_created = (
            query.created_after is not None or query.created_before is not None or query.at_risk
        )
        if query.overdue or query.at_risk or query.due_before is not None:
            low, high = _due_range(query, now)
            return _Walk(
                f"{self.ns}idx:open", filters, checks_created=checks_created, low=low, high=high
            )
        if query.sort == "due":
            return _Walk(f"{self.ns}idx:due", filters, checks_created=checks_created)
        sizes = [await self.redis.zcard(key) for key in filters]
        drive = filters.pop(sizes.index(min(sizes))) if filters else f"{self.ns}idx:created"
        low, high = _created_range(query)
        return _Walk(drive, filters, descending=True, low=low, high=high)

    def _filters(self, query: JobQuery) -> list[str]:
        """The index of each filter the query sets: a matching job is in every one."""
        wanted = (
            ("status", query.status.value if query.status else None),
            ("kind", query.kind.value if query.kind else None),
            ("subject", query.subject),
            ("connector", query.connector),
        )
        return [f"{self.ns}idx:{name}:{value}" for name, value in wanted if value is not None]

    async def _collect(self, walk: _Walk, query: JobQuery, now: datetime) -> list[Position]:
        """Walk batch by batch until a page is found, the range ends or the scan limit is hit."""
        found: list[Position] = []
        scanned = 0
        batch = max(query.limit * 2, 100)
        while len(found) < query.limit and scanned < SEARCH_SCAN_LIMIT and not walk.exhausted:
            candidates = await walk.advance(self.redis, batch)
            if candidates:
                scanned += len(candidates)
                found.extend(await self._matching(candidates, walk, query, now))
        return found

    async def _matching(
        self, candidates: list[Position], walk: _Walk, query: JobQuery, now: datetime
    ) -> list[Position]:
        """The candidates in every filter index, of none of the hidden kinds and, when the walk
        checks it, created in range."""
        keys = [*walk.filters, f"{self.ns}idx:created"] if walk.checks_created else walk.filters
        hidden = [f"{self.ns}idx:kind:{kind.value}" for kind in sorted(query.hidden_kinds)]
        if not keys and not hidden:
            return candidates
        width = len(keys) + len(hidden)
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, job_id in candidates:
                for key in [*keys, *hidden]:
                    pipe.zscore(key, job_id)
            answers = await pipe.execute()
        rows = [answers[index : index + width] for index in range(0, len(answers), width)]
        return [
            candidate
            for candidate, row in zip(candidates, rows, strict=True)
            if all(score is not None for score in row[: len(keys)])
            and all(score is None for score in row[len(keys) :])
            and (
                not walk.checks_created
                or _created_fits(candidate[0], row[len(keys) - 1], query, now)
            )
        ]


@dataclass
class _Walk:
    """One search's walk along its driving index.

    ``low`` and ``high`` bound what is left of the walk, in Redis's score syntax (``(``
    makes a bound exclusive); ``last_seen`` is the last job walked past (or the cursor's),
    and ``exhausted`` says the range has no more jobs.
    """

    drive: str
    filters: list[str]
    descending: bool = False
    checks_created: bool = False
    low: str = "-inf"
    high: str = "+inf"
    last_seen: Position | None = None
    exhausted: bool = False

    def resume_after(self, position: Position) -> None:
        """Go on after ``position``: from its score, since jobs sharing it may be unseen."""
        self.last_seen = position
        self._start_from(str(position[0]))

    def _start_from(self, bound: str) -> None:
        if self.descending:
            self.high = bound
        else:
            self.low = bound

    async def advance(self, redis: Any, batch: int) -> list[Position]:
        """The unseen jobs among the next ``batch`` of the range, walking past them."""
        if self.descending:
            raw = await redis.zrevrangebyscore(
                self.drive, self.high, self.low, start=0, num=batch, withscores=True
            )
        else:
            raw = await redis.zrangebyscore(
                self.drive, self.low, self.high, start=0, num=batch, withscores=True
            )
        fetched = [(float(score), member.decode()) for member, score in raw]
        unseen = [
            position
            for position in fetched
            if self.last_seen is None
            or not _at_or_before(position, self.last_seen, self.descending)
        ]
        if unseen:
            self.resume_after(unseen[-1])
        elif len(fetched) == batch and self.last_seen is not None:
            # A whole batch of one score already seen: step past that score.
            self._start_from(f"({self.last_seen[0]}")
        self.exhausted = len(fetched) < batch
        return unseen


def job_indexes(namespace: str, job: Job) -> list[str]:
    """Every index :mod:`jobs.store` may hold ``job`` in, for removing it from all of them.

    Each status's index is named, not only the job's own status's, so that removing a
    job from these leaves it in none; ``idx:expires`` is the store's, not a search's.
    """
    fixed = ("created", "due", "open", "expires")
    return [
        *(f"{namespace}idx:{name}" for name in fixed),
        *(f"{namespace}idx:status:{status.value}" for status in JobStatus),
        f"{namespace}idx:kind:{job.kind.value}",
        f"{namespace}idx:subject:{job.subject}",
        *(f"{namespace}idx:connector:{name}" for name in job.connectors),
    ]


def _due_range(query: JobQuery, now: datetime) -> tuple[str, str]:
    """The due dates a deadline query walks: overdue, at risk (not yet due), due before."""
    if query.overdue:
        return "-inf", f"({epoch_ms(now)}"
    low = str(epoch_ms(now)) if query.at_risk else "-inf"
    high = f"({epoch_ms(query.due_before)}" if query.due_before is not None else "+inf"
    return low, high


def _created_range(query: JobQuery) -> tuple[str, str]:
    """The creation dates a walk newest first stays between (both exclusive)."""
    low = f"({epoch_ms(query.created_after)}" if query.created_after is not None else "-inf"
    high = f"({epoch_ms(query.created_before)}" if query.created_before is not None else "+inf"
    return low, high


def _created_fits(due_ms: float, created_ms: float, query: JobQuery, now: datetime) -> bool:
    """Whether a job found by due date was created in range and, if asked, is at risk."""
    if query.created_after is not None and created_ms <= epoch_ms(query.created_after):
        return False
    if query.created_before is not None and created_ms >= epoch_ms(query.created_before):
        return False
    remaining = due_ms - epoch_ms(now)
    return not query.at_risk or 0 <= remaining < (due_ms - created_ms) * AT_RISK_SHARE


def _next_cursor(found: list[Position], limit: int, walk: _Walk) -> str | None:
    """Where the next page starts: after the page's last job, or after the last job walked."""
    if len(found) > limit or (len(found) == limit and not walk.exhausted):
        return _encode_cursor(found[limit - 1])
    if not walk.exhausted and walk.last_seen is not None:
        return _encode_cursor(walk.last_seen)
    return None


def _encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([position[0], position[1]])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> Position:
    try:
        score, job_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(score), str(job_id)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise BadCursor(f"cursor {cursor!r} is not one this service made") from exc


def _at_or_before(candidate: Position, cursor: Position, descending: bool) -> bool:
    """Whether ``candidate`` was already on an earlier page."""
    score, job_id = candidate
    if score != cursor[0]:
        return score > cursor[0] if descending else score < cursor[0]
    return job_id >= cursor[1] if descending else job_id <= cursor[1]
