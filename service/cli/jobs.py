"""``handover jobs`` and ``handover export``: support work from a terminal, over the HTTP API.

::

    handover jobs list [--status S] [--kind K] [--subject X] [--connector C] [--overdue]
                       [--at-risk] [--sort created|due] [--limit N] [--all] [--json]
    handover jobs show ID                         facts, per-connector status, the timeline
    handover jobs retry ID [--wait]               re-run the failed connectors of a failed job
    handover jobs cancel ID [--reason TEXT]
    handover jobs extend ID [--months N | --days N] --reason TEXT
                                                  as the job's jurisdiction allows (GDPR: 2
                                                  months in all, within the first month)
    handover jobs refuse ID --grounds G --reason TEXT
    handover jobs ask ID --needs TEXT [--resume-on-answer]
    handover jobs resume ID [--verified-by TEXT]
    handover jobs lift ID --reason TEXT [--lifts-at ISO] [--email E --verified-by TEXT]
                                                  a restriction lifted once the subject is
                                                  told (Art. 18(3))
    handover jobs decide ID (--uphold | --reject --grounds TEXT)
                                                  an objection waiting for support (Art. 21(1))
    handover export [SUBJECT] [--format F]... [--connector C]... [--category C]...
                    [--wait] [--download FILE]
    handover object [SUBJECT] --purpose P... [--connector C]... [--reason TEXT] [--wait]
                                                  an objection (GDPR Art. 21)
    handover rectify [SUBJECT] --change CONNECTOR/DATASET.FIELD=VALUE... [--reason TEXT] [--wait]
                                                  a rectification (GDPR Art. 16); VALUE is
                                                  read as JSON when it is (42, true, "42"),
                                                  else as text
    handover jobs purge [--dry-run]               delete the jobs that ended over
                                                  HANDOVER_RECORD_RETENTION ago

``jobs purge`` works on the shared Redis and object storage that ``handover worker``
reads (:mod:`jobs.records`), not over the API, and prints counts only. Every other
command is a client of the API at ``HANDOVER_URL`` (default
``http://127.0.0.1:8080``) with the bearer token ``HANDOVER_TOKEN``; ``--url`` and
``--token`` override them. Times are shown in UTC. ``--wait`` follows the job over its
live event stream, polling when the stream drops, and draws its progress on stderr:
in place on a terminal, one line per change otherwise. It exits 0 when the job
succeeds and 1 when it ends any other way.

Errors are :class:`~service.cli.client.CliError` and its subclasses, each printed as
one ``handover: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from jobs.archive.formats import FORMATS
from jobs.lifecycle import RefusalGrounds
from jobs.model import JobStatus, RunStatus
from jobs.records import RecordsError, purge
from jobs.settings import Settings
from service.cli.client import (
    DEFAULT_URL,
    ApiClient,
    CliError,
    Connection,
    Event,
    Job,
    JobUnsuccessful,
    job_path,
    open_client,
)
from service.cli.connectors import table

COMMANDS = frozenset({"jobs", "export", "object", "rectify"})
MAX_PAGE = 200
POLL_SECONDS = 0.5
BAR_WIDTH = 20
ERROR_EXCERPT = 60
ENDED = frozenset(status.value for status in JobStatus if status.terminal)
#: Where following a job stops: it ended, or it waits for a person.
SETTLED = ENDED | {JobStatus.NEEDS_ATTENTION.value, JobStatus.AWAITING_INFORMATION.value}
FINISHED_RUNS = frozenset(status.value for status in RunStatus if status.finished)
EVENT_FIELDS = frozenset({"id", "at", "type", "actor"})


@dataclass
class Progress:
    """Where a job stands, as the progress bar shows it: status and per-connector runs."""

    status: str
    runs: dict[str, str]
    records: dict[str, int] = field(default_factory=dict)

    @classmethod
    def before(cls, job: Job) -> Progress:
        """Nothing happened yet: the start its timeline is replayed onto."""
        return cls(status="", runs=dict.fromkeys(job["connectors"], "pending"))

    @classmethod
    def of_job(cls, job: Job) -> Progress:
        """As the job itself says."""
        runs = job["connectors"]
        return cls(
            status=job["status"],
            runs={name: run["status"] for name, run in runs.items()},
            records={name: run["records"] for name, run in runs.items()},
        )

    def apply(self, event: Event) -> None:
        """Move on by one timeline event."""
        status = event.get("status")
        if isinstance(status, str):
            self.status = status
        kind = event["type"]
        if kind == "retried":
            for name, run in self.runs.items():
                if run != "succeeded":
                    self.runs[name] = "pending"
                    self.records.pop(name, None)
            return
        connector = event.get("connector")
        if not isinstance(connector, str) or connector not in self.runs:
            return
        if kind == "connector.started":
            self.runs[connector] = "running"
        elif kind == "connector.succeeded":
            self.runs[connector] = "succeeded"
            self.records[connector] = int(event.get("records") or 0)
        elif kind == "connector.failed":
            self.runs[connector] = "failed"
        elif kind == "connector.unidentified":
            self.runs[connector] = "unidentified"
        elif kind == "processor.asked":
            self.runs[connector] = "waiting_on_processor"
        elif kind == "processor.replied":
            self.runs[connector] = "pending"

    @property
    def ended(self) -> bool:
        """The job has ended, or waits for support: nothing more happens on its own."""
        return self.status in SETTLED

    def line(self) -> str:
        """``running   [##########          ] 1/2 connectors, 3 records``."""
        total = len(self.runs)
        done = sum(run in FINISHED_RUNS for run in self.runs.values())
        failed = sum(run == "failed" for run in self.runs.values())
        filled = round(BAR_WIDTH * done / total) if total else 0
        bar = "#" * filled + " " * (BAR_WIDTH - filled)
        failures = f" ({failed} failed)" if failed else ""
        records = sum(self.records.values())
        noun = "record" if records == 1 else "records"
        return f"{self.status:<9} [{bar}] {done}/{total} connectors{failures}, {records} {noun}"


class ProgressBar:
    """Draws progress on ``stream``: redrawn in place on a terminal, else a line per change."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.in_place = stream.isatty()
        self.shown = ""

    def draw(self, progress: Progress) -> None:
        """Show ``progress`` if it looks different from what is shown."""
        line = progress.line()
        if line == self.shown:
            return
        self.shown = line
        self.stream.write(f"\r{line}\x1b[K" if self.in_place else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line drawn in place."""
        if self.in_place and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _replay(progress: Progress, events: Sequence[Event], bar: ProgressBar) -> str | None:
    """Apply and draw each event in turn; returns the last event's id."""
    for event in events:
        progress.apply(event)
        bar.draw(progress)
    return str(events[-1]["id"]) if events else None


def _after(events: list[Event], seen: str | None) -> list[Event]:
    """The events that came after the one with id ``seen``."""
    ids = [event["id"] for event in events]
    return events[ids.index(seen) + 1 :] if seen in ids else events


async def follow(api: ApiClient, job: Job, bar: ProgressBar) -> Job:
    """Draw the job's progress until it ends; returns the job as it ended.

    The timeline so far is replayed first, so what is drawn depends only on the
    events, not on when the command started; then the live stream takes over, and
    polling after the last event seen when the stream drops.
    """
    job_id = job["id"]
    progress = Progress.before(job)
    seen = _replay(progress, await api.events(job_id), bar)
    if not progress.ended:
        with contextlib.suppress(CliError, ValueError):
            async with contextlib.aclosing(api.stream_events(job_id, seen)) as stream:
                async for event in stream:
                    seen = _replay(progress, [event], bar)
                    if progress.ended:
                        break
    while not progress.ended:
        await asyncio.sleep(POLL_SECONDS)
        seen = _replay(progress, _after(await api.events(job_id), seen), bar) or seen
    ended = await api.job(job_id)
    bar.draw(Progress.of_job(ended))
    return ended


def _why_unsuccessful(job: Job) -> str:
    failed = [
        f"{name}: {run['error']} ({run['error_class']})"
        for name, run in job["connectors"].items()
        if run["status"] == "failed"
    ]
    if job["status"] == "failed":
        return f"{job['kind']} {job['id']} failed: " + ("; ".join(failed) or job["error"] or "")
    if job["status"] == JobStatus.NEEDS_ATTENTION.value:
        waiting = "; ".join(
            f"{name}: {run['error']}"
            for name, run in job["connectors"].items()
            if run["status"] == "unidentified"
        )
        return (
            f"{job['kind']} {job['id']} needs attention: {waiting} "
            "(support adds identifiers, or decides to go without)"
        )
    if job["status"] == JobStatus.AWAITING_INFORMATION.value:
        needs = (job.get("information") or {}).get("needs", "")
        return f"{job['kind']} {job['id']} awaits the subject's information: {needs}"
    if job["status"] == JobStatus.REFUSED.value:
        refusal = job.get("refusal") or {}
        return (
            f"{job['kind']} {job['id']} was refused "
            f"({refusal.get('grounds', '')}): {refusal.get('reason', '')}"
        )
    return f"{job['kind']} {job['id']} ended {job['status']}"


async def wait_for(api: ApiClient, job: Job, download: Path | None) -> int:
    """Follow the job until it succeeds and save its archive to ``download``, if given."""
    bar = ProgressBar(sys.stderr)
    try:
        ended = await follow(api, job, bar)
    finally:
        bar.close()
    if ended["status"] != "succeeded":
        raise JobUnsuccessful(_why_unsuccessful(ended))
    if download is None:
        return 0
    result = ended.get("result") or {}
    size = await api.download(ended["id"], download, result.get("sha256"), result.get("crc32"))
    print(f"Saved {download} ({size:,} bytes)", file=sys.stderr)
    return 0


def _checksums(result: Mapping[str, Any]) -> str:
    """The archive's checksums as the job records them."""
    if result.get("sha256"):
        return f"sha256 {result['sha256']}"
    return (
        f"crc32 {result.get('crc32') or 'unknown'} (assembled by the object store: "
        "manifest.json signs each file's SHA-256)"
    )


def _moment(text: str | None, *, seconds: bool = False) -> str:
    if not text:
        return ""
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def deadline_marker(job: Job) -> str:
    """``OVERDUE`` or ``AT RISK`` as the API judged the job, else ``""``."""
    state = job.get("deadline")
    return state.upper() if state in {"overdue", "at risk"} else ""


def _error_excerpt(job: Job) -> str:
    errors = [run["error"] for run in job["connectors"].values() if run["error"]]
    error = job.get("error") or (errors[0] if errors else "")
    return error if len(error) <= ERROR_EXCERPT else error[: ERROR_EXCERPT - 1] + "…"


def jobs_table(jobs: Sequence[Job]) -> str:
    """One aligned row per job."""
    rows = []
    for job in jobs:
        runs = job["connectors"].values()
        done = sum(run["status"] in FINISHED_RUNS for run in runs)
        due = f"{_moment(job['due_at'])} {deadline_marker(job)}".rstrip()
        rows.append(
            [
                job["id"],
                job["kind"],
                job["subject"],
                job["status"],
                _moment(job["created_at"]),
                due,
                f"{done}/{len(runs)}",
                _error_excerpt(job),
            ]
        )
    header = [
        "ID",
        "KIND",
        "SUBJECT",
        "STATUS",
        "CREATED (UTC)",
        "DUE (UTC)",
        "CONNECTORS",
        "ERROR",
    ]
    return table(header, rows)


def _detail(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
        return orjson.dumps(value).decode()
    return str(value)


def event_details(event: Event) -> str:
    """The event's own fields as ``key=value`` pairs."""
    return " ".join(
        f"{key}={_detail(value)}"
        for key, value in event.items()
        if key not in EVENT_FIELDS and value is not None
    )


def job_report(job: Job, events: Sequence[Event]) -> str:
    """The job's facts, its connectors and its timeline."""
    options = job["options"]
    due = f"{_moment(job['due_at'])} UTC {deadline_marker(job)}".rstrip()
    if job.get("extended_months"):
        due += f" (extended by {job['extended_months']} month(s))"
    if job.get("extended_days"):
        due += f" (extended by {job['extended_days']} day(s))"
    if job.get("deadline") == "paused":
        due += " (clock paused)"
    facts = [
        ("Job", job["id"]),
        ("Kind", job["kind"]),
        ("Subject", job["subject"]),
        ("Status", job["status"]),
        ("Requested by", job["requested_by"]),
        ("Created", f"{_moment(job['created_at'])} UTC"),
        ("Updated", f"{_moment(job['updated_at'])} UTC"),
        ("Jurisdiction", job.get("jurisdiction", "")),
        ("Due", due),
        ("Generation", str(job["generation"])),
    ]
    if job.get("acknowledge_by"):
        facts.append(("Acknowledge by", f"{_moment(job['acknowledge_by'])} UTC"))
    information = job.get("information")
    if information:
        facts.append(("Asked for", f"{information['needs']} (by {information['asked_by']})"))
        if information.get("answered_at"):
            offered = ", ".join(information.get("offered") or [])
            answer = information["answer"] + (f" [offers {offered}]" if offered else "")
            facts.append(("Answer", answer))
    refusal = job.get("refusal")
    if refusal:
        facts.append(("Refused", f"{refusal['grounds']}: {refusal['reason']}"))
        facts.append(("Complaints", f"{refusal['authority']}, {refusal['authority_url']}"))
    if options.get("formats"):
        facts.append(("Formats", ", ".join(options["formats"])))
    for change in job.get("new_values") or []:
        where = f"{change['connector']}/{change['dataset']}.{change['field']}"
        how = " (identity: approve with --verified-by)" if change["identity"] else ""
        facts.append(("New value", f"{where} = {change['value']!r}{how}"))
    if job.get("error"):
        facts.append(("Error", job["error"]))
    result = job.get("result")
    if result:
        facts.append(
            (
                "Archive",
                f"{result['size']:,} bytes, {_checksums(result)}, "
                f"expires {_moment(result['expires_at'])} UTC",
            )
        )
    width = max(len(name) for name, _ in facts)
    lines = [f"{name + ':':<{width + 1}}  {value}" for name, value in facts]
    connectors = [
        [
            name,
            run["status"],
            str(run["records"]),
            str(run["bytes"]),
            str(run["attempts"]),
            f"{run['error']} ({run['error_class']})" if run["error"] else "",
        ]
        for name, run in job["connectors"].items()
    ]
    timeline = [
        [_moment(event["at"], seconds=True), event["type"], event["actor"], event_details(event)]
        for event in events
    ]
    return "\n".join(
        [
            *lines,
            "",
            "Connectors",
            table(["NAME", "STATUS", "RECORDS", "BYTES", "ATTEMPTS", "ERROR"], connectors),
            "",
            "Timeline (UTC)",
            table(["TIME", "EVENT", "ACTOR", "DETAILS"], timeline),
        ]
    )


async def list_jobs(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs list``: a table, or JSON lines; every page with ``--all``."""
    params = {"sort": args.sort, "limit": str(args.limit)}
    for name in ("status", "kind", "subject", "connector"):
        if getattr(args, name):
            params[name] = getattr(args, name)
    if args.overdue:
        params["overdue"] = "true"
    if args.at_risk:
        params["at_risk"] = "true"
    jobs: list[Job] = []
    while True:
        page = await api.call("GET", "/v1/jobs", params=params)
        for job in page["jobs"]:
            if args.json:
                print(orjson.dumps(job).decode())
            else:
                jobs.append(job)
        cursor = page["next_cursor"]
        if cursor is None or not args.all:
            break
        params["cursor"] = cursor
    if not args.json:
        print(jobs_table(jobs) if jobs else "No jobs match.")
    if cursor is not None and not args.all:
        print("More jobs match: --all lists every page.", file=sys.stderr)
    return 0


async def show_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs show``: facts, connectors, timeline."""
    job = await api.job(args.id)
    print(job_report(job, await api.events(job["id"])))
    return 0


async def retry_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs retry``: queue the failed connectors again; with ``--wait``, follow the job."""
    job: Job = await api.call("POST", job_path(args.id, "retry"))
    print(f"{job['id']} {job['status']} (generation {job['generation']})", flush=True)
    return await wait_for(api, job, None) if args.wait else 0


async def cancel_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs cancel``."""
    body = {"reason": args.reason} if args.reason else None
    job: Job = await api.call("POST", job_path(args.id, "cancel"), body=body)
    print(f"{job['id']} {job['status']}")
    return 0


async def extend_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs extend``: a later deadline, with the reason the subject is told."""
    body: dict[str, Any] = {"reason": args.reason}
    for unit in ("months", "days"):
        if getattr(args, unit) is not None:
            body[unit] = getattr(args, unit)
    job: Job = await api.call("POST", job_path(args.id, "extend"), body=body)
    extended = (
        f"{job['extended_days']} day(s)"
        if job.get("extended_days")
        else f"{job['extended_months']} month(s)"
    )
    print(
        f"{job['id']} {job['status']}, due {_moment(job['due_at'])} UTC "
        f"(extended by {extended} in all)"
    )
    return 0


async def refuse_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs refuse``: the request ends refused; the subject is told why and where to complain."""
    body = {"grounds": args.grounds, "reason": args.reason}
    job: Job = await api.call("POST", job_path(args.id, "refuse"), body=body)
    refusal = job["refusal"]
    print(f"{job['id']} {job['status']} ({refusal['grounds']}); complaints: {refusal['authority']}")
    return 0


async def ask_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs ask``: the subject is asked for what is needed; the job waits for the answer."""
    body = {"needs": args.needs, "resume_on_answer": args.resume_on_answer}
    job: Job = await api.call("POST", job_path(args.id, "ask"), body=body)
    clock = "paused" if job["deadline"] == "paused" else "running"
    print(f"{job['id']} {job['status']} (the deadline's clock is {clock})")
    return 0


async def resume_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs resume``: a job that waits for information goes on."""
    body = {"verified_by": args.verified_by} if args.verified_by else None
    job: Job = await api.call("POST", job_path(args.id, "resume"), body=body)
    print(f"{job['id']} {job['status']}, due {_moment(job['due_at'])} UTC")
    return 0


async def create_export(api: ApiClient, args: argparse.Namespace) -> int:
    """``export``: ask for an export and print its id; follow it with ``--wait``."""
    body: dict[str, Any] = {}
    for key, value in (
        ("subject", args.subject),
        ("formats", args.format),
        ("connectors", args.connector),
        ("categories", args.category),
    ):
        if value:
            body[key] = value
    job: Job = await api.call("POST", "/v1/exports", body=body)
    print(job["id"], flush=True)
    if not (args.wait or args.download):
        return 0
    return await wait_for(api, job, args.download)


async def lift_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs lift``: the subject is told, then the restriction is lifted; prints the lift job."""
    body: dict[str, Any] = {"reason": args.reason}
    if args.lifts_at:
        body["lifts_at"] = args.lifts_at
    if args.email:
        body["identifiers"] = {"email": args.email, "verified_by": args.verified_by or ""}
    job: Job = await api.call("POST", job_path(args.id, "lift"), body=body)
    print(f"{job['id']} {job['status']}", flush=True)
    return await wait_for(api, job, None) if args.wait else 0


async def decide_job(api: ApiClient, args: argparse.Namespace) -> int:
    """``jobs decide``: support upholds an objection (it runs) or rejects it, with grounds."""
    body: dict[str, Any] = {"upheld": args.uphold}
    if args.grounds:
        body["grounds"] = args.grounds
    if args.verified_by:
        body["verified_by"] = args.verified_by
    job: Job = await api.call("POST", job_path(args.id, "decide"), body=body)
    print(f"{job['id']} {job['status']}")
    return 0


async def create_objection(api: ApiClient, args: argparse.Namespace) -> int:
    """``object``: object to processing; prints each job's id, then its status.

    Direct marketing runs at once; other purposes wait for support's decision (a second
    job when both are named). ``--wait`` follows the first to its end.
    """
    body: dict[str, Any] = {"purposes": args.purpose}
    for key, value in (
        ("subject", args.subject),
        ("connectors", args.connector),
        ("reason", args.reason),
    ):
        if value:
            body[key] = value
    job: Job = await api.call("POST", "/v1/objections", body=body)
    jobs = [job]
    related = job["options"].get("related")
    if related:
        jobs.append(await api.job(related))
    for each in jobs:
        print(f"{each['id']} {each['status']} {','.join(each['options']['purposes'])}", flush=True)
    return await wait_for(api, job, None) if args.wait else 0


async def create_rectification(api: ApiClient, args: argparse.Namespace) -> int:
    """``rectify``: correct fields; prints the job's id and status (``awaiting_confirmation``
    when support must approve it); ``--wait`` follows it to its end."""
    body: dict[str, Any] = {"changes": args.change}
    for key, value in (("subject", args.subject), ("reason", args.reason)):
        if value:
            body[key] = value
    job: Job = await api.call("POST", "/v1/rectifications", body=body)
    print(f"{job['id']} {job['status']}", flush=True)
    return await wait_for(api, job, None) if args.wait else 0


def _change(text: str) -> dict[str, Any]:
    """``CONNECTOR/DATASET.FIELD=VALUE`` as the API's change; VALUE as JSON when it is."""
    where, equals, raw = text.partition("=")
    connector, slash, path = where.partition("/")
    dataset, dot, field = path.partition(".")
    if not (equals and slash and dot and connector and dataset and field):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not CONNECTOR/DATASET.FIELD=VALUE (e.g. profile/profile.name=Alice)"
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    if isinstance(value, list | dict) or value is None:
        value = raw
    return {"connector": connector, "dataset": dataset, "field": field, "value": value}


Command = Callable[[ApiClient, argparse.Namespace], Awaitable[int]]


def purge_jobs(args: argparse.Namespace) -> int:
    """``jobs purge``: delete finished jobs past ``HANDOVER_RECORD_RETENTION``; print counts."""
    settings = Settings.load()
    if settings.redis_url is None:
        print(
            "handover: HANDOVER_REDIS_URL: purging needs the shared Redis that holds the jobs",
            file=sys.stderr,
        )
        return 2
    try:
        result = asyncio.run(purge(settings, actor="cli", dry_run=args.dry_run))
    except RecordsError as exc:
        print(f"handover: jobs purge: {exc}", file=sys.stderr)
        return 1
    print("\n".join(result.lines()))
    return 0


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text!r}: a page is 1 to {MAX_PAGE} jobs")
    return value


def _download_target(text: str) -> Path:
    target = Path(text)
    if not target.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{target.parent} is not a directory")
    return target


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``jobs`` (list, show, retry, cancel, extend, refuse, ask, resume, …) and ``export``."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", help=f"the API (default: $HANDOVER_URL, else {DEFAULT_URL})")
    api.add_argument("--token", help="bearer token (default: $HANDOVER_TOKEN)")
    jobs = commands.add_parser("jobs", help="find requests, read their timeline, act on them")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[api], help="jobs as a table, newest first")
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument(
        "--kind",
        choices=[
            "export",
            "erasure",
            "restriction",
            "objection",
            "rectification",
            "lift",
            "disclosure",
        ],
    )
    listing.add_argument("--subject")
    listing.add_argument("--connector", help="jobs that involve this connector")
    listing.add_argument("--overdue", action="store_true", help="live jobs past their deadline")
    listing.add_argument(
        "--at-risk", action="store_true", help="live jobs with under a quarter of their time left"
    )
    listing.add_argument(
        "--sort", choices=["created", "due"], default="created", help="default: created"
    )
    listing.add_argument(
        "--limit", type=_page_size, default=50, help=f"jobs per page, 1-{MAX_PAGE} (default 50)"
    )
    listing.add_argument("--all", action="store_true", help="follow the cursor to the last page")
    listing.add_argument("--json", action="store_true", help="one JSON job per line")
    listing.set_defaults(jobs_run=list_jobs)

    show = actions.add_parser("show", parents=[api], help="a job's facts and timeline")
    show.add_argument("id", metavar="ID")
    show.set_defaults(jobs_run=show_job)

    retry = actions.add_parser("retry", parents=[api], help="re-run a failed job's failures")
    retry.add_argument("id", metavar="ID")
    retry.add_argument("--wait", action="store_true", help="follow the job until it ends")
    retry.set_defaults(jobs_run=retry_job)

    cancel = actions.add_parser("cancel", parents=[api], help="stop a job that has not ended")
    cancel.add_argument("id", metavar="ID")
    cancel.add_argument("--reason", help="kept on the job's timeline")
    cancel.set_defaults(jobs_run=cancel_job)

    extend = actions.add_parser(
        "extend",
        parents=[api],
        help="extend a deadline, as the job's jurisdiction allows",
        description="GDPR and UK GDPR: by two further months in all, announced within the "
        "first month; CCPA: once, by 45 days, within the first 45; LGPD: never. Later, "
        "the API refuses it (409 extension-too-late).",
    )
    extend.add_argument("id", metavar="ID")
    amount = extend.add_mutually_exclusive_group()
    amount.add_argument("--months", type=int, help="months to add (GDPR); default: all left")
    amount.add_argument("--days", type=int, help="days to add (CCPA); default: all left")
    extend.add_argument("--reason", required=True, help="why; the subject is told")
    extend.set_defaults(jobs_run=extend_job)

    refuse = actions.add_parser(
        "refuse", parents=[api], help="refuse a request, telling the subject why"
    )
    refuse.add_argument("id", metavar="ID")
    refuse.add_argument(
        "--grounds", required=True, choices=[grounds.value for grounds in RefusalGrounds]
    )
    refuse.add_argument("--reason", required=True, help="why; the subject is told")
    refuse.set_defaults(jobs_run=refuse_job)

    ask = actions.add_parser(
        "ask", parents=[api], help="ask the subject for information; the job waits"
    )
    ask.add_argument("id", metavar="ID")
    ask.add_argument("--needs", required=True, help="what is needed; the subject is told")
    ask.add_argument(
        "--resume-on-answer", action="store_true", help="the subject's answer resumes the job"
    )
    ask.set_defaults(jobs_run=ask_job)

    resume = actions.add_parser(
        "resume", parents=[api], help="resume a job that waits for information"
    )
    resume.add_argument("id", metavar="ID")
    resume.add_argument(
        "--verified-by", help="accept the identifiers the subject offered, saying how checked"
    )
    resume.set_defaults(jobs_run=resume_job)

    lifting = actions.add_parser(
        "lift",
        parents=[api],
        help="lift a restriction; the subject is told first (Art. 18(3))",
        description="The subject is sent the restriction_lifting notice at once; the lift "
        "job unblocks nothing until it is sent. Without --email the notice cannot go and "
        "the lift fails, saying so.",
    )
    lifting.add_argument("id", metavar="ID", help="the restriction's job id")
    lifting.add_argument("--reason", required=True, help="why; the subject is told")
    lifting.add_argument("--lifts-at", help="from when, ISO 8601 (default: now)")
    lifting.add_argument("--email", help="the subject's address, to tell them at")
    lifting.add_argument("--verified-by", help="how that address was verified")
    lifting.add_argument("--wait", action="store_true", help="follow the lift until it ends")
    lifting.set_defaults(jobs_run=lift_job)

    decide = actions.add_parser(
        "decide",
        parents=[api],
        help="uphold or reject an objection or a rectification waiting for support",
        description="An objection to processing other than direct marketing (GDPR Art. "
        "21(1)), or a rectification waiting for approval: upheld, it runs; rejected, with its "
        "grounds, it ends refused and the subject is told them.",
    )
    decide.add_argument("id", metavar="ID")
    verdict = decide.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--uphold", action="store_true", help="the objection runs")
    verdict.add_argument("--reject", action="store_true", help="refuse it (needs --grounds)")
    decide.add_argument("--grounds", help="the compelling legitimate grounds; the subject is told")
    decide.add_argument(
        "--verified-by",
        help="approving a change to an identity field: how the new value was checked",
    )
    decide.set_defaults(jobs_run=decide_job)

    purge = actions.add_parser(
        "purge",
        help="delete the jobs that ended over HANDOVER_RECORD_RETENTION ago "
        "(needs HANDOVER_REDIS_URL)",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="count what would be purged, delete nothing"
    )
    purge.set_defaults(jobs_run=None)

    export = commands.add_parser(
        "export", parents=[api], help="ask for an export; --wait follows it live"
    )
    export.add_argument(
        "subject", nargs="?", metavar="SUBJECT", help="whose data (a subject's token may omit it)"
    )
    export.add_argument("--format", action="append", choices=FORMATS, help="repeatable")
    export.add_argument("--connector", action="append", help="only these (repeatable)")
    export.add_argument("--category", action="append", help="only these (repeatable)")
    export.add_argument(
        "--wait", action="store_true", help="draw progress on stderr until the job ends"
    )
    export.add_argument(
        "--download",
        type=_download_target,
        metavar="FILE",
        help="save the archive there (implies --wait)",
    )
    export.set_defaults(jobs_run=create_export)

    objection = commands.add_parser(
        "object",
        parents=[api],
        help="object to processing (GDPR Art. 21); direct marketing runs at once",
    )
    objection.add_argument(
        "subject", nargs="?", metavar="SUBJECT", help="whose data (a subject's token may omit it)"
    )
    objection.add_argument(
        "--purpose",
        action="append",
        required=True,
        help="direct_marketing, or a purpose the connectors map (repeatable)",
    )
    objection.add_argument("--connector", action="append", help="only these (repeatable)")
    objection.add_argument("--reason", help="why, in the subject's words")
    objection.add_argument("--wait", action="store_true", help="follow the first job until it ends")
    objection.set_defaults(jobs_run=create_objection)

    rectification = commands.add_parser(
        "rectify",
        parents=[api],
        help="correct inaccurate data (GDPR Art. 16); identity fields wait for support",
    )
    rectification.add_argument(
        "subject", nargs="?", metavar="SUBJECT", help="whose data (a subject's token may omit it)"
    )
    rectification.add_argument(
        "--change",
        action="append",
        required=True,
        type=_change,
        metavar="CONNECTOR/DATASET.FIELD=VALUE",
        help="repeatable; GET /v1/connectors lists the rectifiable fields",
    )
    rectification.add_argument("--reason", help="why, in the subject's words")
    rectification.add_argument("--wait", action="store_true", help="follow the job until it ends")
    rectification.set_defaults(jobs_run=create_rectification)


async def _run(connection: Connection, command: Command, args: argparse.Namespace) -> int:
    async with open_client(connection) as client:
        return await command(client, args)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Carry out ``handover jobs …``, ``export …``, ``object …`` or ``rectify …``; returns
    the exit status."""
    if args.jobs_run is None:
        return purge_jobs(args)
    try:
        connection = Connection.from_args(args, os.environ if environ is None else environ)
        return asyncio.run(_run(connection, args.jobs_run, args))
    except CliError as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return exc.exit_status
