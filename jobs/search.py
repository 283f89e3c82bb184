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

The walk runs inside Redis (:data:`_WALK`, a Lua script): one call walks batch after batch
and checks each job against the other indexes there, so a rare combination (one job in
twenty of the driving index) costs one round trip, not two per batch. A call stops after
:data:`WALK_CALL_BUDGET` jobs fetched, so that no call holds Redis long, and hands its
place back; the next call goes on from there, batch for batch as one long walk would.
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

#: The most jobs one call of the walk script fetches from the driving index before it hands
#: back its place (it finishes the batch it is in): Redis runs nothing else meanwhile. A
#: thousand jobs checked against one other index took Redis ~1.5 ms (a page of the rare
#: combination over 100,000 jobs: one call).
WALK_CALL_BUDGET = 1_000

#: One or more batches of a walk (:class:`_Walk`), checked in Redis. KEYS[1]: the driving
#: index, then the indexes a job must be in, then those it must not be in (hidden kinds),
#: then ``idx:created`` when the walk checks creation. ARGV: descending ("1"), low, high,
#: the last job seen (score and id; "" for none), batch, page size, jobs found so far, jobs
#: scanned so far, the scan limit, the call's budget, how many indexes a job must be in,
#: how many it must not be in, checks creation ("1"), created after and before (ms; ""
#: for none), at risk ("1"), now (ms), the at-risk share. Returns: exhausted (1 or 0),
#: low, high, the last job seen (score and id, "" for none), jobs scanned, then the score
#: and id of each job found. Scores go back as text: Lua would cut numbers to integers.
_WALK = """
local descending = ARGV[1] == '1'
local low, high = ARGV[2], ARGV[3]
local last_score, last_id = ARGV[4], ARGV[5]
local last_number = tonumber(last_score)
local batch = tonumber(ARGV[6])
local wanted = tonumber(ARGV[7]) - tonumber(ARGV[8])
local scanned, scan_limit = tonumber(ARGV[9]), tonumber(ARGV[10])
local budget = tonumber(ARGV[11])
local musts, hiddens = tonumber(ARGV[12]), tonumber(ARGV[13])
local checks_created = ARGV[14] == '1'
local after, before = tonumber(ARGV[15]), tonumber(ARGV[16])
local at_risk = ARGV[17] == '1'
local now, share = tonumber(ARGV[18]), tonumber(ARGV[19])
local created_key = KEYS[2 + musts + hiddens]

-- byte order, as Python orders str (strcoll follows Redis's locale)
local function id_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function seen(score, id)
  if last_number == nil then return false end
  if score ~= last_number then
    if descending then return score > last_number end
    return score < last_number
  end
  if descending then return not id_before(id, last_id) end
  return not id_before(last_id, id)
end

local function created_fits(due, created)
  if after and created <= after then return false end
  if before and created >= before then return false end
  if not at_risk then return true end
  local remaining = due - now
  return 0 <= remaining and remaining < (due - created) * share
end

local function matches(id, score)
  for i = 2, 1 + musts do
    if not redis.call('ZSCORE', KEYS[i], id) then return false end
  end
  for i = 2 + musts, 1 + musts + hiddens do
    if redis.call('ZSCORE', KEYS[i], id) then return false end
  end
  if not checks_created then return true end
  local created = redis.call('ZSCORE', created_key, id)
  return created ~= false and created_fits(score, tonumber(created))
end

local found, count, fetched_here, exhausted = {}, 0, 0, false
while count < wanted and scanned < scan_limit and not exhausted and fetched_here < budget do
  local raw
  if descending then
    raw = redis.call('ZREVRANGEBYSCORE', KEYS[1], high, low, 'WITHSCORES', 'LIMIT', 0, batch)
  else
    raw = redis.call('ZRANGEBYSCORE', KEYS[1], low, high, 'WITHSCORES', 'LIMIT', 0, batch)
  end
  local fetched = #raw / 2
  fetched_here = fetched_here + fetched
  local unseen = {}
  for i = 1, #raw, 2 do
    if not seen(tonumber(raw[i + 1]), raw[i]) then
      unseen[#unseen + 1] = i
    end
  end
  if #unseen > 0 then
    local i = unseen[#unseen]
    last_id, last_score, last_number = raw[i], raw[i + 1], tonumber(raw[i + 1])
    if descending then high = last_score else low = last_score end
  elseif fetched == batch and last_number ~= nil then
    if descending then high = '(' .. last_score else low = '(' .. last_score end
  end
  exhausted = fetched < batch
  scanned = scanned + #unseen
  for _, i in ipairs(unseen) do
    if matches(raw[i], tonumber(raw[i + 1])) then
      count = count + 1
      found[#found + 1] = raw[i + 1]
      found[#found + 1] = raw[i]
    end
  end
end
local answer = {exhausted and 1 or 0, low, high, last_score, last_id, scanned}
for _, word in ipairs(found) do answer[#answer + 1] = word end
return answer
"""

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
        self._walk = self.redis.register_script(_WALK)

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
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in filters:
                pipe.zcard(key)
            sizes = await pipe.execute()
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
        """Walk batch by batch until a page is found, the range ends or the scan limit is hit:
        in Redis, one call of :data:`_WALK` per :data:`WALK_CALL_BUDGET` jobs fetched."""
        found: list[Position] = []
        scanned = 0
        hidden = [f"{self.ns}idx:kind:{kind.value}" for kind in sorted(query.hidden_kinds)]
        created = [f"{self.ns}idx:created"] if walk.checks_created else []
        checks = [
            len(walk.filters),
            len(hidden),
            "1" if walk.checks_created else "0",
            _ms_or_empty(query.created_after),
            _ms_or_empty(query.created_before),
            "1" if query.at_risk else "0",
            epoch_ms(now),
            repr(AT_RISK_SHARE),
        ]
        batch = max(query.limit * 2, 100)
        while len(found) < query.limit and scanned < SEARCH_SCAN_LIMIT and not walk.exhausted:
            answer = await self._walk(
                keys=[walk.drive, *walk.filters, *hidden, *created],
                args=[
                    *walk.script_state(),
                    batch,
                    query.limit,
                    len(found),
                    scanned,
                    SEARCH_SCAN_LIMIT,
                    WALK_CALL_BUDGET,
                    *checks,
                ],
            )
            exhausted, low, high, last_score, last_id, scanned, *words = answer
            walk.went_to(bool(exhausted), low.decode(), high.decode(), last_score, last_id)
            found.extend(
                (float(score), job_id.decode())
                for score, job_id in zip(words[::2], words[1::2], strict=True)
            )
        return found


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

    def script_state(self) -> list[str]:
        """Where the walk stands, as :data:`_WALK` takes it: its direction, bounds, last seen."""
        last = ("", "") if self.last_seen is None else (repr(self.last_seen[0]), self.last_seen[1])
        return ["1" if self.descending else "0", self.low, self.high, *last]

    def went_to(
        self, exhausted: bool, low: str, high: str, last_score: bytes, last_id: bytes
    ) -> None:
        """Where a call of :data:`_WALK` left the walk."""
        self.exhausted, self.low, self.high = exhausted, low, high
        if last_id:
            self.last_seen = float(last_score), last_id.decode()

    def _start_from(self, bound: str) -> None:
        if self.descending:
            self.high = bound
        else:
            self.low = bound


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


def _ms_or_empty(moment: datetime | None) -> str:
    """A moment as the walk script takes it: epoch milliseconds, or "" for none."""
    return "" if moment is None else str(epoch_ms(moment))


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
