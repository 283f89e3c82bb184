"""``handover report``: the DPO's report from a terminal, over the HTTP API.

::

    handover report --from DATE --to DATE [--json | --csv] [--output FILE]

How the requests received from ``--from`` to ``--to`` (both included, days in
``HANDOVER_TIME_ZONE``) were handled (GDPR Art. 5(2)): ``GET /v1/reports``, so a
support or admin token. A summary by default; ``--json`` and ``--csv`` give the API's
own answer, to stdout or ``--output``. Like ``handover jobs``, a client of the API at
``HANDOVER_URL`` with ``HANDOVER_TOKEN`` (``--url``, ``--token``); errors are one
``handover: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from service.cli.client import DEFAULT_URL, ApiClient, CliError, Connection, open_client
from service.cli.connectors import table

REPORTS = "/v1/reports"


def _day(value: str) -> str:
    """An argument that must be a date, ``YYYY-MM-DD``."""
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report``."""
    report = commands.add_parser(
        "report", help="how the requests of a period were handled (the DPO's report)"
    )
    report.add_argument("--url", help=f"the API (default: $HANDOVER_URL, else {DEFAULT_URL})")
    report.add_argument("--token", help="bearer token (default: $HANDOVER_TOKEN)")
    report.add_argument("--from", dest="start", type=_day, required=True, help="first day")
    report.add_argument("--to", dest="end", type=_day, required=True, help="last day, included")
    shape = report.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the API's JSON answer")
    shape.add_argument("--csv", action="store_true", help="one CSV table")
    report.add_argument("--output", type=Path, help="write to FILE instead of stdout")


def summary(report: Mapping[str, Any]) -> str:
    """The report as a few lines and tables for a terminal."""
    answer = report["time_to_answer"]
    lines = [
        f"Requests received from {report['from']} to {report['to']} "
        f"({report['time_zone']}): {report['jobs']}",
        f"Answered: {answer['answered']} ({answer['answered_late']} after the deadline); "
        f"still open: {answer['still_open']}",
        f"Time to answer, days: median {_number(answer['median_days'])}, 90th percentile "
        f"{_number(answer['p90_days'])}; allowed (median) {_number(answer['allowed_median_days'])}",
        "",
    ]
    kinds = list(report["weeks"][0]["received"]) if report["weeks"] else []
    weeks = [
        [
            w["week"],
            *(str(w["received"][k]) for k in kinds),
            str(w["overdue_at_end"]),
            str(w["at_risk_at_end"]),
        ]
        for w in report["weeks"]
    ]
    lines.append(table(["WEEK", *(k.upper() for k in kinds), "OVERDUE", "AT RISK"], weeks))
    if report["processors"]:
        rows = [
            [p["name"], str(p["runs"]), str(p["failed"]), str(p["retried"])]
            for p in report["processors"]
        ]
        lines += ["", table(["PROCESSOR", "RUNS", "FAILED", "RETRIED"], rows)]
    decisions = [f"refused ({g}): {n}" for g, n in sorted(report["refusals"].items())]
    decisions += [f"extended ({k}): {n}" for k, n in sorted(report["extensions"].items())]
    lines += ["", *(decisions or ["No refusal or extension."])]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


async def _report(client: ApiClient, args: argparse.Namespace) -> bytes:
    query = f"{REPORTS}?from={args.start}&to={args.end}"
    if args.csv:
        return await client.fetch(f"{query}&format=csv")
    answer = await client.call("GET", query)
    if args.json:
        return orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n"
    return summary(answer).encode()


async def _run(connection: Connection, args: argparse.Namespace) -> bytes:
    async with open_client(connection) as client:
        return await _report(client, args)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Carry out ``handover report``; returns the exit status."""
    try:
        connection = Connection.from_args(args, os.environ if environ is None else environ)
        text = asyncio.run(_run(connection, args))
        if args.output is None:
            sys.stdout.write(text.decode())
            return 0
        try:
            args.output.write_bytes(text)
        except OSError as exc:
            raise CliError(f"{args.output}: cannot write it: {exc.strerror or exc}") from None
        print(f"written to {args.output}", file=sys.stderr)
        return 0
    except CliError as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return exc.exit_status


__all__ = ["add_parser", "run", "summary"]
