"""The DPO's report: how the requests received in a period were handled (GDPR Art. 5(2)).

:func:`build_report` walks the jobs created in the period (the store's ``created``
index, :mod:`jobs.search`) and their timelines, and counts:

- requests received per ISO week (Monday first, in ``HANDOVER_TIME_ZONE``), by kind (a
  compelled disclosure, :data:`~jobs.search.HIDDEN_FROM_SUBJECTS`, is no subject's request
  and counts nowhere in the report);
- time to answer: from receipt to the job's last move to an answer (succeeded, failed,
  refused, canceled; an archive's later expiry is no answer), median and 90th
  percentile (nearest rank), in days, beside the time the deadlines allowed, and how
  many ended after their deadline;
- at the end of each week, how many of those requests were overdue (past their due
  date and not ended) and at risk (under a quarter of their time left,
  :data:`~jobs.model.AT_RISK_SHARE`), by the rule of the dashboard's badges
  (:func:`~jobs.model.deadline_standing`). A past week's end is judged by each job's
  due date as it stands now (an extension granted later counts back to its receipt),
  and a job whose clock stands still now (waiting for the subject's information) is
  paused, neither overdue nor at risk, at every week's end since it was asked; the
  timeline's earlier pauses are not replayed;
- per processor, its runs (those attempted at least once), and how many failed (as they
  stand) and were retried (more than one attempt);
- refusals by grounds (their code, never staff's reason) and extensions by length.

Nothing in it names or can single out a subject: no job id, subject, identifier or
free text (an extension's or refusal's reason is staff's own words and may hold personal
data), only counts, kinds, processors' names and the law's grounds. A job purged after
``HANDOVER_RECORD_RETENTION`` is no longer counted; the report says over how many jobs
it was built. A request received before the period is not in it, even while still open.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from jobs.model import Event, Job, JobKind, JobStatus, RunStatus, deadline_standing
from jobs.search import HIDDEN_FROM_SUBJECTS, JobQuery
from jobs.store import JobStore

#: Timelines read at once while building a report.
EVENTS_AT_ONCE = 50
#: The longest period one report covers.
MAX_PERIOD = timedelta(days=366)
_ENDINGS = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.REFUSED,
        JobStatus.CANCELED,
        JobStatus.EXPIRED,
    }
)
_PAGE = 500


class PeriodError(ValueError):
    """The period asked for is not one a report can cover; the message says why."""


@dataclass
class Week:
    """One ISO week: requests received, by kind; overdue and at risk at its end."""

    starts: date
    received: dict[str, int] = field(default_factory=dict)
    overdue: int = 0
    at_risk: int = 0


@dataclass
class Processor:
    """One processor's share of the period's requests."""

    name: str
    runs: int = 0
    failed: int = 0
    retried: int = 0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.runs if self.runs else 0.0

    @property
    def retry_rate(self) -> float:
        return self.retried / self.runs if self.runs else 0.0


@dataclass
class Report:
    """How the requests received from ``start`` to ``end`` (both included) were handled."""

    start: date
    end: date
    time_zone: str
    generated_at: datetime
    jobs: int = 0
    weeks: list[Week] = field(default_factory=list)
    answered: int = 0
    answered_late: int = 0
    answer_days_median: float | None = None
    answer_days_p90: float | None = None
    allowed_days_median: float | None = None
    open: int = 0
    processors: list[Processor] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    extensions: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The report as the API answers it (JSON)."""
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "time_zone": self.time_zone,
            "generated_at": self.generated_at.isoformat(),
            "jobs": self.jobs,
            "weeks": [
                {
                    "week": _week_name(week.starts),
                    "starts": week.starts.isoformat(),
                    "received": week.received,
                    "overdue_at_end": week.overdue,
                    "at_risk_at_end": week.at_risk,
                }
                for week in self.weeks
            ],
            "time_to_answer": {
                "answered": self.answered,
                "answered_late": self.answered_late,
                "still_open": self.open,
                "median_days": self.answer_days_median,
                "p90_days": self.answer_days_p90,
                "allowed_median_days": self.allowed_days_median,
            },
            "processors": [
                {
                    "name": p.name,
                    "runs": p.runs,
                    "failed": p.failed,
                    "retried": p.retried,
                    "failure_rate": round(p.failure_rate, 4),
                    "retry_rate": round(p.retry_rate, 4),
                }
                for p in self.processors
            ],
            "refusals": self.refusals,
            "extensions": self.extensions,
        }

    def as_csv(self) -> str:
        """The report as one CSV table: ``section,key,kind,value`` per figure."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["section", "key", "kind", "value"])
        writer.writerow(["period", self.start.isoformat(), "from", ""])
        writer.writerow(["period", self.end.isoformat(), "to", ""])
        writer.writerow(["jobs", "", "", self.jobs])
        for week in self.weeks:
            name = _week_name(week.starts)
            for kind, count in sorted(week.received.items()):
                writer.writerow(["received", name, kind, count])
            writer.writerow(["overdue_at_end", name, "", week.overdue])
            writer.writerow(["at_risk_at_end", name, "", week.at_risk])
        for key, value in self.as_dict()["time_to_answer"].items():
            writer.writerow(["time_to_answer", key, "", "" if value is None else value])
        for processor in self.processors:
            writer.writerow(["processor", processor.name, "runs", processor.runs])
            writer.writerow(["processor", processor.name, "failed", processor.failed])
            writer.writerow(["processor", processor.name, "retried", processor.retried])
        for grounds, count in sorted(self.refusals.items()):
            writer.writerow(["refusals", grounds, "", count])
        for length, count in sorted(self.extensions.items()):
            writer.writerow(["extensions", length, "", count])
        return out.getvalue()


def period(start: date, end: date) -> None:
    """Check a report's period: ``start`` no later than ``end``, at most :data:`MAX_PERIOD`."""
    if end < start:
        raise PeriodError(f"to ({end}) is before from ({start})")
    if end - start >= MAX_PERIOD:
        raise PeriodError(f"a report covers at most {MAX_PERIOD.days} days")


async def build_report(
    store: JobStore, start: date, end: date, zone: tzinfo, zone_name: str, now: datetime
) -> Report:
    """The report of the requests received from ``start`` to ``end`` (dates in ``zone``)."""
    period(start, end)
    begins = datetime.combine(start, time(), zone)
    ends = datetime.combine(end + timedelta(days=1), time(), zone)
    jobs = await _jobs(store, begins, ends)
    ended = await _ended_at(store, jobs)
    report = Report(start=start, end=end, time_zone=zone_name, generated_at=now, jobs=len(jobs))
    report.weeks = _weeks(jobs, ended, start, end, zone, min(now, ends))
    _answers(report, jobs, ended)
    report.processors = _processors(jobs)
    report.refusals = dict(Counter(j.refusal.grounds for j in jobs if j.refusal is not None))
    report.extensions = dict(Counter(_extension(j) for j in jobs if _extension(j)))
    return report


async def _jobs(store: JobStore, begins: datetime, ends: datetime) -> list[Job]:
    found: list[Job] = []
    cursor: str | None = None
    while True:
        page = await store.search(
            JobQuery(
                created_after=begins - timedelta(milliseconds=1),  # the walk's bounds exclude
                created_before=ends,
                limit=_PAGE,
                cursor=cursor,
            )
        )
        found.extend(
            j
            for j in page.jobs
            if begins <= j.created_at < ends and j.kind not in HIDDEN_FROM_SUBJECTS
        )
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


async def _ended_at(store: JobStore, jobs: Sequence[Job]) -> dict[str, datetime]:
    """When each ended job last moved to an ending status, from its timeline."""
    ended = [job for job in jobs if job.status in _ENDINGS]
    moments: dict[str, datetime] = {}
    for start in range(0, len(ended), EVENTS_AT_ONCE):
        chunk = ended[start : start + EVENTS_AT_ONCE]
        timelines = await asyncio.gather(*(store.events(job.id) for job in chunk))
        for job, events in zip(chunk, timelines, strict=True):
            moments[job.id] = answered_at(events) or job.updated_at
    return moments


def answered_at(events: Sequence[Event]) -> datetime | None:
    """When the job last moved to an answer (any ending but ``expired``: an archive's
    expiry, after its export succeeded, is no answer); None if its timeline shows none."""
    answers = [
        e.at
        for e in events
        if e.data.get("status") in _ENDINGS and e.data.get("status") != JobStatus.EXPIRED
    ]
    return answers[-1] if answers else None


def _weeks(
    jobs: Sequence[Job],
    ended: dict[str, datetime],
    start: date,
    end: date,
    zone: tzinfo,
    until: datetime,
) -> list[Week]:
    weeks = []
    monday = start - timedelta(days=start.weekday())
    while monday <= end:
        week = Week(starts=monday)
        week_ends = datetime.combine(monday + timedelta(days=7), time(), zone)
        received = Counter(
            job.kind.value
            for job in jobs
            if monday <= job.created_at.astimezone(zone).date() < monday + timedelta(days=7)
        )
        week.received = {
            kind.value: received.get(kind.value, 0)
            for kind in JobKind
            if kind not in HIDDEN_FROM_SUBJECTS
        }
        moment = min(week_ends, until)
        for job in jobs:
            if job.created_at >= moment or ended.get(job.id, moment) < moment:
                continue
            standing = _standing(job, moment)
            week.overdue += standing == "overdue"
            week.at_risk += standing == "at risk"
        weeks.append(week)
        monday += timedelta(days=7)
    return weeks


def _standing(job: Job, moment: datetime) -> str:
    """Where the job's deadline stood at ``moment`` (the module's docstring: its rule)."""
    information = job.information
    if job.clock_stopped and information is not None and moment >= information.asked_at:
        return "paused"
    return deadline_standing(job.created_at, job.due_at, moment)


def _answers(report: Report, jobs: Sequence[Job], ended: dict[str, datetime]) -> None:
    taken = [(ended[j.id] - j.created_at) / timedelta(days=1) for j in jobs if j.id in ended]
    allowed = [(j.due_at - j.created_at) / timedelta(days=1) for j in jobs]
    report.answered = len(taken)
    report.open = len(jobs) - len(taken)
    report.answered_late = sum(1 for j in jobs if j.id in ended and ended[j.id] > j.due_at)
    report.answer_days_median = round(statistics.median(taken), 2) if taken else None
    report.answer_days_p90 = round(_nearest_rank(taken, 0.9), 2) if taken else None
    report.allowed_days_median = round(statistics.median(allowed), 2) if allowed else None


def _nearest_rank(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _processors(jobs: Sequence[Job]) -> list[Processor]:
    found: dict[str, Processor] = {}
    for job in jobs:
        for name, run in job.connectors.items():
            if run.attempts == 0:  # never asked (yet): nothing to rate
                continue
            processor = found.setdefault(name, Processor(name))
            processor.runs += 1
            processor.failed += run.status is RunStatus.FAILED
            processor.retried += run.attempts > 1
    return sorted(found.values(), key=lambda p: p.name)


def _extension(job: Job) -> str:
    if job.extended_months:
        return f"{job.extended_months} month" + ("s" if job.extended_months > 1 else "")
    if job.extended_days:
        return f"{job.extended_days} day" + ("s" if job.extended_days > 1 else "")
    return ""


def _week_name(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


__all__ = [
    "MAX_PERIOD",
    "PeriodError",
    "Processor",
    "Report",
    "Week",
    "answered_at",
    "build_report",
    "period",
]
