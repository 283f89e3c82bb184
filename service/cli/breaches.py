"""``handover breach``: the breach register (GDPR Art. 33) from a terminal, over the HTTP API.

::

    handover breach list [--json]                  every breach and its 72-hour clock
    handover breach show ID                        one breach, every version of its facts
    handover breach record --aware-at T --nature TEXT --subject-category C... --record-category C...
                           --consequences TEXT --measures TEXT --dpo CONTACT
                           [--occurred-at T] [--subjects N] [--records N]
    handover breach update ID --note TEXT [--subjects N] [--records N] [--nature TEXT] ...
    handover breach notified ID --at T --reference REF [--authority NAME] [--delay-reasons TEXT]
    handover breach report ID [--html] [--output FILE]   the signed report (`handover verify` it)
    handover breach export [--csv] [--output FILE]       the register with its history
    handover breach notify ID --subjects FILE    tell the affected subjects (Art. 34)
    handover breach notices ID [--report FILE]   how far that is; the delivery report

Times are ISO 8601 with a zone (``2026-12-01T08:00:00Z``). Recording and updating need
an admin's token; reading, support's. Like ``handover jobs``, a client of the API at
``HANDOVER_URL`` with ``HANDOVER_TOKEN`` (``--url``, ``--token``); errors are one
``handover: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from service.cli.client import DEFAULT_URL, ApiClient, CliError, Connection, open_client
from service.cli.connectors import table

Command = Callable[[ApiClient, argparse.Namespace], Awaitable[int]]
BREACHES = "/v1/breaches"


def _when(text: str | None) -> str:
    if not text:
        return ""
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _moment(value: str) -> str:
    """An argument that must be an ISO 8601 time with a zone."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no time zone (add Z or +01:00)")
    return value


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative")
    return number


def breaches_table(breaches: list[dict[str, Any]]) -> str:
    """One row per breach: its clock first, for the eye."""
    rows = [
        [
            breach["clock"].replace("_", " ").upper(),
            breach["id"],
            _when(breach["aware_at"]),
            _when(breach["notify_authority_by"]),
            str(breach["version"]),
            breach["facts"]["nature"][:50],
        ]
        for breach in breaches
    ]
    return table(["CLOCK", "ID", "AWARE", "NOTIFY BY", "V", "NATURE"], rows)


def describe(breach: dict[str, Any]) -> str:
    """A breach, its clock and every version, as ``show`` prints it."""
    facts = breach["facts"]
    lines = [
        f"breach {breach['id']}: {breach['clock'].replace('_', ' ')}",
        f"  aware            {_when(breach['aware_at'])} UTC",
        f"  notify by        {_when(breach['notify_authority_by'])} UTC (72 h)",
    ]
    notification = breach["notification"]
    if notification:
        late = " LATE: " + notification["delay_reasons"] if notification["late"] else ""
        lines.append(
            f"  notified         {_when(notification['notified_at'])} UTC, reference "
            f"{notification['reference']}{late}"
        )
    for label, value in (
        ("nature", facts["nature"]),
        ("subjects", _approx(facts["approx_subjects"], facts["subject_categories"])),
        ("records", _approx(facts["approx_records"], facts["record_categories"])),
        ("consequences", facts["consequences"]),
        ("measures", facts["measures"]),
        ("dpo", facts["dpo_contact"]),
    ):
        lines.append(f"  {label:<16} {value}")
    lines.append("versions:")
    for version in breach["versions"]:
        note = f": {version['note']}" if version["note"] else ""
        lines.append(
            f"  {version['number']}  {_when(version['recorded_at'])}  {version['recorded_by']}"
            f"{note}"
        )
    return "\n".join(lines)


def _approx(number: int | None, categories: list[str]) -> str:
    count = "number not yet known" if number is None else f"about {number}"
    return f"{count} ({', '.join(categories)})"


async def list_breaches(client: ApiClient, args: argparse.Namespace) -> int:
    answer = await client.call("GET", BREACHES)
    if args.json:
        for breach in answer["breaches"]:
            print(orjson.dumps(breach).decode())
    else:
        print(breaches_table(answer["breaches"]))
    return 0


async def show_breach(client: ApiClient, args: argparse.Namespace) -> int:
    print(describe(await client.call("GET", f"{BREACHES}/{args.id}")))
    return 0


def _facts(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "occurred_at": args.occurred_at,
        "nature": args.nature,
        "subject_categories": args.subject_category,
        "approx_subjects": args.subjects,
        "record_categories": args.record_category,
        "approx_records": args.records,
        "consequences": args.consequences,
        "measures": args.measures,
        "dpo_contact": args.dpo,
    }
    return {key: value for key, value in given.items() if value is not None}


async def record_breach(client: ApiClient, args: argparse.Namespace) -> int:
    body = {"aware_at": args.aware_at, **_facts(args)}
    breach = await client.call("POST", BREACHES, body=body)
    print(
        f"breach {breach['id']} recorded: notify the authority by "
        f"{_when(breach['notify_authority_by'])} UTC ({breach['clock'].replace('_', ' ')})"
    )
    return 0


async def update_breach(client: ApiClient, args: argparse.Namespace) -> int:
    body = {"note": args.note, **_facts(args)}
    breach = await client.call("POST", f"{BREACHES}/{args.id}/versions", body=body)
    print(f"breach {breach['id']}: version {breach['version']} recorded")
    return 0


async def record_notification(client: ApiClient, args: argparse.Namespace) -> int:
    body = {"notified_at": args.at, "reference": args.reference}
    if args.authority:
        body["authority"] = args.authority
    if args.delay_reasons:
        body["delay_reasons"] = args.delay_reasons
    breach = await client.call("POST", f"{BREACHES}/{args.id}/authority-notification", body=body)
    print(f"breach {breach['id']}: {breach['clock'].replace('_', ' ')}; the clock is stopped")
    return 0


def _write(text: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text.decode())
        return
    try:
        output.write_bytes(text)
    except OSError as exc:
        raise CliError(f"{output}: cannot write it: {exc.strerror or exc}") from None
    print(f"written to {output}", file=sys.stderr)


async def breach_report(client: ApiClient, args: argparse.Namespace) -> int:
    path = f"{BREACHES}/{args.id}/report"
    if args.html:
        _write(await client.fetch(f"{path}.html"), args.output)
    else:
        report = await client.call("GET", path)
        _write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n", args.output)
    return 0


async def export_register(client: ApiClient, args: argparse.Namespace) -> int:
    if args.csv:
        _write(await client.fetch(f"{BREACHES}.csv"), args.output)
    else:
        answer = await client.call("GET", BREACHES)
        _write(orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n", args.output)
    return 0


async def notify_subjects(client: ApiClient, args: argparse.Namespace) -> int:
    path = f"{BREACHES}/{args.id}/notices"
    progress = await client.upload(path, args.subjects)
    print(f"breach {args.id}: telling {progress['total']} subjects (Art. 34)")
    return 0


async def notices_progress(client: ApiClient, args: argparse.Namespace) -> int:
    path = f"{BREACHES}/{args.id}/notices"
    if args.report is not None:
        _write(await client.fetch(f"{path}/report.csv"), args.report)
        return 0
    progress = await client.call("GET", path)
    print(
        f"breach {args.id}: {progress['state'].replace('_', ' ')}; of {progress['total']}: "
        f"{progress['sent']} sent, {progress['no_address']} without an address, "
        f"{progress['not_looked_up']} not looked up, {progress['failed']} failed, "
        f"{progress['unconfirmed']} unconfirmed, {progress['duplicate']} duplicate, "
        f"{progress['pending']} pending"
    )
    return 0


async def retry_notices(client: ApiClient, args: argparse.Namespace) -> int:
    progress = await client.call("POST", f"{BREACHES}/{args.id}/notices/retry")
    print(
        f"breach {args.id}: {progress['pending']} subjects to tell again (Art. 34); "
        f"{progress['state'].replace('_', ' ')}"
    )
    return 0


def _fact_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--occurred-at", type=_moment, help="when it happened, if known")
    parser.add_argument("--nature", required=required, help="what happened")
    parser.add_argument("--subject-category", action="append", required=required, help="repeatable")
    parser.add_argument("--subjects", type=_count, help="approximate number of subjects")
    parser.add_argument("--record-category", action="append", required=required, help="repeatable")
    parser.add_argument("--records", type=_count, help="approximate number of records")
    parser.add_argument("--consequences", required=required, help="the likely consequences")
    parser.add_argument("--measures", required=required, help="measures taken or proposed")
    parser.add_argument("--dpo", required=required, help="the DPO's contact")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``breach`` (list, show, record, update, notified, report, export, notify, notices)."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", help=f"the API (default: $HANDOVER_URL, else {DEFAULT_URL})")
    api.add_argument("--token", help="bearer token (default: $HANDOVER_TOKEN)")
    breach = commands.add_parser("breach", help="the breach register and its 72-hour clock")
    actions = breach.add_subparsers(dest="breach_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[api], help="every breach and its clock")
    listing.add_argument("--json", action="store_true", help="one JSON breach per line")
    listing.set_defaults(breach_run=list_breaches)

    show = actions.add_parser("show", parents=[api], help="one breach and every version")
    show.add_argument("id", metavar="ID")
    show.set_defaults(breach_run=show_breach)

    record = actions.add_parser("record", parents=[api], help="record a breach (admin)")
    record.add_argument("--aware-at", type=_moment, required=True, help="when you became aware")
    _fact_flags(record, required=True)
    record.set_defaults(breach_run=record_breach)

    update = actions.add_parser("update", parents=[api], help="facts that arrived later")
    update.add_argument("id", metavar="ID")
    update.add_argument("--note", required=True, help="what changed")
    _fact_flags(update, required=False)
    update.set_defaults(breach_run=update_breach)

    notified = actions.add_parser(
        "notified", parents=[api], help="record the authority's notification"
    )
    notified.add_argument("id", metavar="ID")
    notified.add_argument("--at", type=_moment, required=True, help="when it was notified")
    notified.add_argument("--reference", required=True, help="the authority's reference")
    notified.add_argument("--authority", help="which authority")
    notified.add_argument("--delay-reasons", help="required past the 72 hours")
    notified.set_defaults(breach_run=record_notification)

    report = actions.add_parser("report", parents=[api], help="the signed Art. 33(3) report")
    report.add_argument("id", metavar="ID")
    report.add_argument("--html", action="store_true", help="the readable page instead")
    report.add_argument("--output", type=Path, metavar="FILE", help="write it there")
    report.set_defaults(breach_run=breach_report)

    notify = actions.add_parser(
        "notify", parents=[api], help="tell the affected subjects (Art. 34, admin)"
    )
    notify.add_argument("id", metavar="ID")
    notify.add_argument(
        "--subjects",
        type=Path,
        required=True,
        metavar="FILE",
        help="one subject id per line, optionally ',language' (streamed)",
    )
    notify.set_defaults(breach_run=notify_subjects)

    notices = actions.add_parser("notices", parents=[api], help="how far the Art. 34 notices are")
    notices.add_argument("id", metavar="ID")
    notices.add_argument(
        "--report", type=Path, metavar="FILE", help="save the delivery report (CSV) there"
    )
    notices.set_defaults(breach_run=notices_progress)

    retry = actions.add_parser(
        "retry-notices",
        parents=[api],
        help="send again the Art. 34 notices that failed or were not looked up (admin)",
    )
    retry.add_argument("id", metavar="ID")
    retry.set_defaults(breach_run=retry_notices)

    export = actions.add_parser("export", parents=[api], help="the register with its history")
    export.add_argument("--csv", action="store_true", help="CSV, one row per version")
    export.add_argument("--output", type=Path, metavar="FILE", help="write it there")
    export.set_defaults(breach_run=export_register)


async def _run(connection: Connection, command: Command, args: argparse.Namespace) -> int:
    async with open_client(connection) as client:
        return await command(client, args)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Carry out ``handover breach …``; returns the exit status."""
    try:
        connection = Connection.from_args(args, os.environ if environ is None else environ)
        return asyncio.run(_run(connection, args.breach_run, args))
    except CliError as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return exc.exit_status
