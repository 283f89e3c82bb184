"""``handover jobs`` and ``handover export``: support work from a terminal, over the HTTP API.

::

    handover jobs list [--status S] [--kind K] [--subject X] [--connector C] [--overdue]
                       [--at-risk] [--sort created|due] [--limit N] [--all] [--json]
    handover jobs show ID                         facts, per-connector status, the timeline
    handover jobs retry ID [--wait]               re-run the failed connectors of a failed job
    handover jobs cancel ID [--reason TEXT]
    handover jobs extend ID [--months N] --reason TEXT
    handover export [SUBJECT] [--format F]... [--connector C]... [--category C]...
                    [--wait] [--download FILE]

Every command is a client of the API at ``HANDOVER_URL`` (default
``http://127.0.0.1:8080``) with the bearer token ``HANDOVER_TOKEN``; ``--url`` and
``--token`` override them. Times are shown in UTC. ``--wait`` follows the job over its
live event stream, polling when the stream drops, and draws its progress on stderr:
in place on a terminal, one line per change otherwise. It exits 0 when the job
succeeds and 1 when it ends any other way.

Errors, each printed as one ``handover: ...`` line on stderr::

    CliError            its exit_status ends the process
    ├── UsageError      a missing or malformed setting (2)
    ├── Unreachable     the API, or a download link, cannot be reached (1)
    ├── ApiError        the API answered with a problem: "<status> <title>: <detail>" (1)
    └── JobUnsuccessful the job waited for ended without succeeding (1)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, get_args
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from jobs.model import JobStatus, RunStatus
from jobs.settings import Secret
from service import models
from service.connectors_cli import table

COMMANDS = frozenset({"jobs", "export"})
DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_PAGE = 200
POLL_SECONDS = 0.5
BAR_WIDTH = 20
ERROR_EXCERPT = 60
DOWNLOAD_CHUNK = 1 << 20
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
ENDED = frozenset(status.value for status in JobStatus if status.terminal)
#: Where following a job stops: it ended, or it waits for a person.
SETTLED = ENDED | {JobStatus.NEEDS_ATTENTION.value}
FINISHED_RUNS = frozenset(status.value for status in RunStatus if status.finished)
EVENT_FIELDS = frozenset({"id", "at", "type", "actor"})

# The API's JSON as decoded: a job (models.JobOut) and a timeline entry (models.EventOut).
Job = dict[str, Any]
Event = dict[str, Any]


class CliError(Exception):
    """The command cannot go on; the message is printed as one line."""

    exit_status = EXIT_FAILED


class UsageError(CliError):
    """A setting or argument is missing or malformed."""

    exit_status = EXIT_USAGE


class Unreachable(CliError):
    """Nothing answers at the URL, or the connection broke."""


class ApiError(CliError):
    """The API answered with an error; the message holds its status, title and detail."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status


class JobUnsuccessful(CliError):
    """The job waited for failed, was canceled or expired."""


@dataclass(frozen=True)
class Connection:
    """Where the API is and whose token to send: the flags, else the environment."""

    url: str
    token: Secret

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
        """Read ``--url``/``--token``, then ``HANDOVER_URL``/``HANDOVER_TOKEN``."""
        source = "--url" if args.url else "HANDOVER_URL"
        url = (args.url or environ.get("HANDOVER_URL") or DEFAULT_URL).rstrip("/")
        try:
            parsed = URL(url)
        except ValueError:
            parsed = URL()
        if parsed.scheme not in {"http", "https"} or not parsed.host:
            raise UsageError(f"{source}: {url!r} is not an http:// or https:// URL")
        token = (args.token or environ.get("HANDOVER_TOKEN") or "").strip()
        if not token:
            raise UsageError(
                "HANDOVER_TOKEN: not set; set it (or --token) to a bearer token, "
                "e.g. from `handover token --sub NAME --role support`"
            )
        return cls(url, Secret(token))


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    error = exc.os_error
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(exc)


async def _raise_for_problem(response: aiohttp.ClientResponse) -> None:
    """Raise :class:`ApiError` for an error response, from its problem+json if it has one."""
    if response.status < 400:
        return
    text = await response.text(errors="replace")
    title, detail = response.reason or "Error", _one_line(text)
    with contextlib.suppress(ValueError):
        problem = orjson.loads(text)
        if isinstance(problem, dict):
            title = str(problem.get("title") or title)
            detail = _one_line(str(problem.get("detail") or ""))
    raise ApiError(response.status, title, detail)


class ApiClient:
    """The API's operations the commands use; transport failures become :class:`CliError`."""

    def __init__(self, session: aiohttp.ClientSession, connection: Connection) -> None:
        self.session = session
        self.base = connection.url
        self._auth = {"Authorization": f"Bearer {connection.token.reveal()}"}

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, url: str | URL, *, auth: bool = True, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {**(self._auth if auth else {}), **kwargs.pop("headers", {})}
        origin = self.base if auth else str(URL(url).origin())
        try:
            async with self.session.request(
                method, url, headers=headers, allow_redirects=False, **kwargs
            ) as response:
                yield response
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot reach {origin}: {_connect_reason(exc)}") from None
        except aiohttp.ClientError as exc:
            reason = _one_line(str(exc)) or type(exc).__name__
            raise Unreachable(f"lost the connection to {origin}: {reason}") from None
        except TimeoutError:
            seconds = TIMEOUT.sock_read
            raise Unreachable(f"no answer from {origin} within {seconds:g}s") from None

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON answer of one API call; :class:`ApiError` for an error."""
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self._request(
            method, self.base + path, params=params, data=data, headers=headers
        ) as response:
            await _raise_for_problem(response)
            return orjson.loads(await response.read())

    async def job(self, job_id: str) -> Job:
        """The job, with its per-connector progress."""
        job: Job = await self.call("GET", job_path(job_id))
        return job

    async def events(self, job_id: str) -> list[Event]:
        """The job's timeline so far, oldest first."""
        answer = await self.call("GET", job_path(job_id, "events"))
        events: list[Event] = answer["events"]
        return events

    async def stream_events(self, job_id: str, after: str | None) -> AsyncGenerator[Event, None]:
        """The job's events after event id ``after``, live, until the server ends the stream."""
        headers = {"Accept": "text/event-stream"}
        if after is not None:
            headers["Last-Event-ID"] = after
        async with self._request(
            "GET", self.base + job_path(job_id, "events"), headers=headers
        ) as response:
            await _raise_for_problem(response)
            data: list[str] = []
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(" ") else value)
                elif not line and data:
                    yield orjson.loads("\n".join(data))
                    data = []

    async def download(self, job_id: str, target: Path, sha256: str | None) -> int:
        """Follow the job's download link into ``target``; returns its size.

        The link is fetched without the bearer token: it carries its own signature and
        may point at another host. ``target`` appears only once complete and, when
        ``sha256`` is given, only if the bytes have that digest.
        """
        async with self._request("GET", self.base + job_path(job_id, "download")) as response:
            await _raise_for_problem(response)
            location = response.headers.get("Location")
        if location is None:
            raise ApiError(response.status, "No download link", "the answer had no Location")
        link = URL(location, encoded=True)
        if not link.is_absolute():
            link = URL(self.base).join(link)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        size = 0
        try:
            async with self._request("GET", link, auth=False) as response:
                await _raise_for_problem(response)
                out = await asyncio.to_thread(partial.open, "wb")
                try:
                    async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        await asyncio.to_thread(out.write, chunk)
                finally:
                    await asyncio.to_thread(out.close)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise CliError(
                    f"{target}: the download's SHA-256 {digest.hexdigest()} is not the "
                    f"archive's {sha256}; nothing saved"
                )
        except OSError as exc:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise CliError(f"{target}: cannot write it: {exc.strerror or exc}") from None
        except BaseException:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise
        await asyncio.to_thread(partial.replace, target)
        return size


def job_path(job_id: str, action: str = "") -> str:
    """The API path of a job, or of one of its sub-resources."""
    path = f"/v1/jobs/{quote(job_id, safe='')}"
    return f"{path}/{action}" if action else path


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
    sha256 = (ended.get("result") or {}).get("sha256")
    size = await api.download(ended["id"], download, sha256)
    print(f"Saved {download} ({size:,} bytes)", file=sys.stderr)
    return 0


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
    if options.get("extended_months"):
        due += f" (extended by {options['extended_months']} month(s))"
    facts = [
        ("Job", job["id"]),
        ("Kind", job["kind"]),
        ("Subject", job["subject"]),
        ("Status", job["status"]),
        ("Requested by", job["requested_by"]),
        ("Created", f"{_moment(job['created_at'])} UTC"),
        ("Updated", f"{_moment(job['updated_at'])} UTC"),
        ("Due", due),
        ("Generation", str(job["generation"])),
    ]
    if options.get("formats"):
        facts.append(("Formats", ", ".join(options["formats"])))
    if job.get("error"):
        facts.append(("Error", job["error"]))
    result = job.get("result")
    if result:
        facts.append(
            (
                "Archive",
                f"{result['size']:,} bytes, sha256 {result['sha256']}, "
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
    body = {"months": args.months, "reason": args.reason}
    job: Job = await api.call("POST", job_path(args.id, "extend"), body=body)
    months = job["options"].get("extended_months", args.months)
    print(
        f"{job['id']} {job['status']}, due {_moment(job['due_at'])} UTC "
        f"(extended by {months} month(s) in all)"
    )
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


Command = Callable[[ApiClient, argparse.Namespace], Awaitable[int]]


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
    """Add ``jobs`` (list, show, retry, cancel, extend) and ``export`` to the parser."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", help=f"the API (default: $HANDOVER_URL, else {DEFAULT_URL})")
    api.add_argument("--token", help="bearer token (default: $HANDOVER_TOKEN)")
    jobs = commands.add_parser("jobs", help="find requests, read their timeline, act on them")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[api], help="jobs as a table, newest first")
    listing.add_argument("--status", choices=get_args(models.JobStatusName))
    listing.add_argument("--kind", choices=["export", "erasure", "restriction"])
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
        "extend", parents=[api], help="extend a deadline (two further months at most)"
    )
    extend.add_argument("id", metavar="ID")
    extend.add_argument("--months", type=int, default=1, help="1 or 2 (default 1)")
    extend.add_argument("--reason", required=True, help="why; the subject must be told")
    extend.set_defaults(jobs_run=extend_job)

    export = commands.add_parser(
        "export", parents=[api], help="ask for an export; --wait follows it live"
    )
    export.add_argument(
        "subject", nargs="?", metavar="SUBJECT", help="whose data (a subject's token may omit it)"
    )
    export.add_argument(
        "--format", action="append", choices=get_args(models.Format), help="repeatable"
    )
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


async def _run(connection: Connection, command: Command, args: argparse.Namespace) -> int:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        return await command(ApiClient(session, connection), args)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Carry out ``handover jobs …`` or ``handover export …``; returns the exit status."""
    try:
        connection = Connection.from_args(args, os.environ if environ is None else environ)
        return asyncio.run(_run(connection, args.jobs_run, args))
    except CliError as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return exc.exit_status
