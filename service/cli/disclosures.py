"""``handover disclosure``: compelled disclosures from a terminal, over the HTTP API.

::

    handover disclosure record SUBJECT --authority NAME --reference REF --legal-basis TEXT
                           --notice now|deferred|never [--notice-reason TEXT] [--notice-until T]
                           [--connector C]... [--category C]... [--since T] [--until T]
                           [--email ADDRESS --verified-by TEXT] [--locale L]
    handover disclosure show ID                  the order, the notice rule and its history
    handover disclosure extend ID --until T --reason TEXT   defer the subject's notice further
    handover disclosure link ID [--hours N]      a one-time link for the authority (printed once)

Times are ISO 8601 with a zone (``2027-03-01T00:00:00Z``). Recording, extending and
issuing links need an admin's token; ``show``, support's. Like ``handover breach``, a
client of the API at ``HANDOVER_URL`` with ``HANDOVER_TOKEN`` (``--url``, ``--token``);
errors are one ``handover: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from service.cli.breaches import _moment
from service.cli.client import (
    DEFAULT_URL,
    ApiClient,
    CliError,
    Connection,
    UsageError,
    open_client,
)

Command = Callable[[ApiClient, argparse.Namespace], Awaitable[int]]
DISCLOSURES = "/v1/disclosures"


def _describe(disclosure: Mapping[str, Any]) -> str:
    """A disclosure in a few lines: the order, the rule, what became of the notice."""
    order = disclosure["order"]
    job = disclosure["job"]
    lines = [
        f"disclosure {disclosure['id']} of {disclosure['subject']}, recorded "
        f"{disclosure['created_at']} by {disclosure['created_by']}",
        f"to {order['authority']}, order {order['reference']} ({order['legal_basis']})",
        f"job: {job['status'] if job else 'purged'}",
        f"the subject's notice: {disclosure['rule']}"
        + (f" ({disclosure['reason']})" if disclosure["reason"] else ""),
    ]
    lines += [
        f"  deferred until {d['until']}: {d['reason']} ({d['by']}, {d['at']})"
        for d in disclosure["deferrals"]
    ]
    if disclosure["told_at"]:
        lines.append(f"  told: {disclosure['told']} ({disclosure['told_at']})")
    lines += [
        f"  link issued {link['at']} by {link['by']}, expires {link['expires_at']}, "
        + (f"used {link['used_at']}" if link["used_at"] else "unused")
        for link in disclosure["links"]
    ]
    return "\n".join(lines)


async def record_disclosure(client: ApiClient, args: argparse.Namespace) -> int:
    if (args.email is None) != (args.verified_by is None):
        raise UsageError("--email and --verified-by go together")
    body: dict[str, Any] = {
        "subject": args.subject,
        "authority": args.authority,
        "order_reference": args.reference,
        "legal_basis": args.legal_basis,
        "notice": args.notice,
        "notice_reason": args.notice_reason,
        "notice_until": args.notice_until,
        "connectors": args.connector,
        "categories": args.category,
        "since": args.since,
        "until": args.until,
        "locale": args.locale,
    }
    if args.email is not None:
        body["identifiers"] = {"email": args.email, "verified_by": args.verified_by}
    disclosure = await client.call(
        "POST", DISCLOSURES, body={k: v for k, v in body.items() if v is not None}
    )
    print(_describe(disclosure))
    return 0


async def show_disclosure(client: ApiClient, args: argparse.Namespace) -> int:
    print(_describe(await client.call("GET", f"{DISCLOSURES}/{args.id}")))
    return 0


async def extend_disclosure(client: ApiClient, args: argparse.Namespace) -> int:
    body = {"until": args.until, "reason": args.reason}
    disclosure = await client.call("POST", f"{DISCLOSURES}/{args.id}/extend", body=body)
    print(_describe(disclosure))
    return 0


async def issue_link(client: ApiClient, args: argparse.Namespace) -> int:
    link = await client.call("POST", f"{DISCLOSURES}/{args.id}/link", body={"hours": args.hours})
    print(link["url"])
    print(f"works once, until {link['expires_at']}", file=sys.stderr)
    return 0


def _hours(value: str) -> int:
    try:
        hours = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= hours <= 168:
        raise argparse.ArgumentTypeError(f"{value!r}: between 1 and 168 hours")
    return hours


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``disclosure`` (record, show, extend, link)."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", help=f"the API (default: $HANDOVER_URL, else {DEFAULT_URL})")
    api.add_argument("--token", help="bearer token (default: $HANDOVER_TOKEN)")
    disclosure = commands.add_parser(
        "disclosure", help="disclosures an authority's order compels, and the subject's notice"
    )
    actions = disclosure.add_subparsers(dest="disclosure_command", required=True, metavar="ACTION")

    record = actions.add_parser("record", parents=[api], help="record an order (admin)")
    record.add_argument("subject", metavar="SUBJECT")
    record.add_argument("--authority", required=True, help="who the data goes to")
    record.add_argument("--reference", required=True, help="the order's reference")
    record.add_argument("--legal-basis", required=True, help="the law the order was made under")
    record.add_argument("--notice", required=True, choices=["now", "deferred", "never"])
    record.add_argument("--notice-reason", help="the legal reason (deferred, never)")
    record.add_argument("--notice-until", type=_moment, help="a deferred notice's date")
    record.add_argument("--connector", action="append", help="repeatable; default: all")
    record.add_argument("--category", action="append", help="repeatable; default: all")
    record.add_argument("--since", type=_moment, help="records from then on")
    record.add_argument("--until", type=_moment, help="records before then")
    record.add_argument("--email", help="the subject's address, for the notice")
    record.add_argument("--verified-by", help="how the subject's identity was checked")
    record.add_argument("--locale", help="the notice's language (en, fr, nl, de)")
    record.set_defaults(disclosure_run=record_disclosure)

    show = actions.add_parser("show", parents=[api], help="one disclosure and its history")
    show.add_argument("id", metavar="ID")
    show.set_defaults(disclosure_run=show_disclosure)

    extend = actions.add_parser(
        "extend", parents=[api], help="defer the subject's notice further (admin)"
    )
    extend.add_argument("id", metavar="ID")
    extend.add_argument("--until", type=_moment, required=True, help="the new date")
    extend.add_argument("--reason", required=True, help="a new legal reason")
    extend.set_defaults(disclosure_run=extend_disclosure)

    link = actions.add_parser("link", parents=[api], help="a one-time link for the authority")
    link.add_argument("id", metavar="ID")
    link.add_argument("--hours", type=_hours, default=72, help="how long it lives (1-168)")
    link.set_defaults(disclosure_run=issue_link)


async def _run(connection: Connection, command: Command, args: argparse.Namespace) -> int:
    async with open_client(connection) as client:
        return await command(client, args)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Carry out ``handover disclosure …``; returns the exit status."""
    try:
        connection = Connection.from_args(args, os.environ if environ is None else environ)
        return asyncio.run(_run(connection, args.disclosure_run, args))
    except CliError as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return exc.exit_status
