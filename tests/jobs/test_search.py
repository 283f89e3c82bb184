"""Job search walks the indexes and agrees with a brute-force filter, page after page."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from arq.connections import ArqRedis

from jobs import search
from jobs.model import ConnectorRun, Job, JobKind, JobStatus
from jobs.search import BadCursor, JobQuery
from jobs.store import JobStore
from tests.factories import options_for

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KINDS = list(JobKind)
LIVE = [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.AWAITING_CONFIRMATION]
ENDED = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED]


@pytest.fixture
def make_job() -> Callable[[random.Random, int], Job]:
    def make(rng: random.Random, n: int) -> Job:
        created = NOW - timedelta(days=rng.uniform(0, 60), milliseconds=n)
        due = created + timedelta(days=30) + timedelta(days=rng.choice([0, 0, 0, 30]))
        kind = rng.choice(KINDS)
        return Job(
            id=f"01J{n:023d}",
            kind=kind,
            subject=rng.choice(["alice", "bob", "carol", "dave"]),
            status=rng.choice(LIVE + ENDED),
            requested_by="alice",
            created_at=created,
            updated_at=created,
            due_at=due,
            options=options_for(kind),
            connectors={c: ConnectorRun() for c in rng.sample(["crm", "billing", "devices"], 2)},
        )

    return make


@pytest.fixture
async def corpus(
    redis: ArqRedis, make_job: Callable[[random.Random, int], Job]
) -> tuple[JobStore, list[Job]]:
    store = JobStore(redis)
    rng = random.Random(5)
    jobs = [make_job(rng, n) for n in range(400)]
    for job in jobs:
        await store.create(job)
    return store, jobs


def counts_down(job: Job) -> bool:
    """A live job whose deadline is a subject's: a disclosure's is no subject's right."""
    return not job.status.terminal and job.kind is not JobKind.DISCLOSURE


def brute(jobs: list[Job], query: JobQuery) -> list[str]:
    def keep(job: Job) -> bool:
        if job.kind in query.hidden_kinds:
            return False
        if query.kind and job.kind is not query.kind:
            return False
        if query.status and job.status is not query.status:
            return False
        if query.subject and job.subject != query.subject:
            return False
        if query.connector and query.connector not in job.connectors:
            return False
        live = counts_down(job)
        if query.overdue and not (live and job.due_at < NOW):
            return False
        if query.at_risk:
            remaining = job.due_at - NOW
            if (
                not live
                or remaining < timedelta(0)
                or remaining >= (job.due_at - job.created_at) / 4
            ):
                return False
        if query.due_before and not (live and job.due_at < query.due_before):
            return False
        if query.created_after and job.created_at <= query.created_after:
            return False
        return not (query.created_before and job.created_at >= query.created_before)

    chosen = [job for job in jobs if keep(job)]
    if query.overdue or query.at_risk or query.due_before or query.sort == "due":
        chosen.sort(key=lambda job: (job.due_at, job.id))
    else:
        chosen.sort(key=lambda job: (job.created_at, job.id), reverse=True)
    return [job.id for job in chosen]


async def walk(store: JobStore, query: JobQuery) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page = await store.search(JobQuery(**{**query.__dict__, "cursor": cursor}), now=NOW)
        assert len(page.jobs) <= query.limit
        seen.extend(job.id for job in page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("pagination did not end")


QUERIES = [
    JobQuery(),
    JobQuery(status=JobStatus.FAILED),
    JobQuery(kind=JobKind.EXPORT, subject="alice"),
    JobQuery(connector="billing", status=JobStatus.QUEUED, limit=7),
    JobQuery(overdue=True),
    JobQuery(overdue=True, kind=JobKind.ERASURE, limit=5),
    JobQuery(at_risk=True),
    JobQuery(due_before=NOW + timedelta(days=3), limit=10),
    JobQuery(sort="due", subject="bob", limit=13),
    JobQuery(
        created_after=NOW - timedelta(days=10), created_before=NOW - timedelta(days=2), limit=9
    ),
    JobQuery(subject="nobody"),
    JobQuery(kind=JobKind.LIFT, status=JobStatus.FAILED, limit=2),
    JobQuery(subject="carol", hidden_kinds=frozenset({JobKind.DISCLOSURE}), limit=6),
    JobQuery(at_risk=True, kind=JobKind.OBJECTION, hidden_kinds=frozenset({JobKind.EXPORT})),
    # one job in seven, over all 400: a batch of 100 rarely fills a page of 20
    JobQuery(hidden_kinds=frozenset(KINDS) - {JobKind.LIFT}, limit=20),
    JobQuery(sort="due", hidden_kinds=frozenset(KINDS) - {JobKind.ERASURE}, limit=20),
]


@pytest.mark.parametrize("query", QUERIES, ids=[str(i) for i in range(len(QUERIES))])
async def test_search_matches_brute_force_across_pages(
    corpus: tuple[JobStore, list[Job]], query: JobQuery
) -> None:
    store, jobs = corpus
    assert await walk(store, query) == brute(jobs, query)


@pytest.mark.parametrize("scan_limit", [20_000, 40], ids=["calls", "pages"])
@pytest.mark.parametrize("query", QUERIES, ids=[str(i) for i in range(len(QUERIES))])
async def test_a_walk_cut_short_loses_and_repeats_nothing(
    corpus: tuple[JobStore, list[Job]],
    query: JobQuery,
    scan_limit: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each call of the walk script does one batch (a search goes on over several calls)
    and, with the scan limit under a batch, each page too (it goes on at the next page):
    the pages, some of them short or empty, still add up to exactly the matching jobs."""
    store, jobs = corpus
    monkeypatch.setattr(search, "WALK_CALL_BUDGET", 1)
    monkeypatch.setattr(search, "SEARCH_SCAN_LIMIT", scan_limit)
    assert await walk(store, query) == brute(jobs, query)


async def test_pages_stay_stable_while_jobs_arrive(
    corpus: tuple[JobStore, list[Job]], make_job: Callable[[random.Random, int], Job]
) -> None:
    store, jobs = corpus
    first = await store.search(JobQuery(limit=20), now=NOW)
    newcomer = make_job(random.Random(1), 999)
    newcomer.created_at = NOW  # newest of all: it lands before page one, not inside page two
    await store.create(newcomer)
    second = await store.search(JobQuery(limit=20, cursor=first.next_cursor), now=NOW)
    expected = brute(jobs, JobQuery())
    assert [j.id for j in first.jobs + second.jobs] == expected[:40]


async def test_counts_follow_transitions(corpus: tuple[JobStore, list[Job]]) -> None:
    store, jobs = corpus
    counts = await store.counts()
    for kind in KINDS:
        for status in LIVE + ENDED:
            expected = sum(1 for j in jobs if j.kind is kind and j.status is status)
            assert counts.get(kind.value, {}).get(status.value, 0) == expected
    queued = next(j for j in jobs if j.status is JobStatus.QUEUED)
    await store.transition(queued.id, JobStatus.RUNNING, actor="worker")
    after = await store.counts()
    assert after[queued.kind.value]["running"] == counts[queued.kind.value].get("running", 0) + 1
    overdue = sum(1 for j in jobs if counts_down(j) and j.due_at < NOW)
    assert await store.count_overdue(NOW) == overdue


async def test_a_forged_cursor_is_refused(corpus: tuple[JobStore, list[Job]]) -> None:
    store, _ = corpus
    with pytest.raises(BadCursor):
        await store.search(JobQuery(cursor="not-a-cursor"), now=NOW)
