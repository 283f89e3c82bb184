"""``handover storage``: object storage kept in step with the jobs in Redis.

::

    handover storage reconcile [--dry-run] [--min-age 1h]   delete the archives and staged
                                                            parts that no job owns

It reads the settings ``handover worker`` reads (Redis, the bucket or the data dir, the
prefix); ``--min-age`` defaults to ``HANDOVER_RECONCILE_MIN_AGE``. It prints what it
deleted (or, with ``--dry-run``, would delete) by job id and count, and refuses with
one line, deleting nothing, when Redis does not answer or holds no epoch marker
(:mod:`jobs.reconcile`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from jobs.reconcile import ReconcileError, Reconciliation, open_reconciler
from jobs.settings import Settings, parse_duration

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``storage`` and its subcommands to the ``handover`` parser."""
    storage = commands.add_parser(
        "storage", help="keep object storage in step with the jobs (needs HANDOVER_REDIS_URL)"
    )
    actions = storage.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    reconcile = actions.add_parser(
        "reconcile", help="delete the archives and staged parts that no job owns"
    )
    reconcile.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
    )
    reconcile.add_argument(
        "--min-age",
        help="only job folders whose newest object is older than this, e.g. 1h, 30m "
        "(default: HANDOVER_RECONCILE_MIN_AGE, 1h)",
    )


def run(args: argparse.Namespace) -> int:
    """Carry out ``handover storage reconcile``; returns the exit status."""
    settings = Settings.load()
    if settings.redis_url is None:
        print(
            "handover: HANDOVER_REDIS_URL: reconciling needs the shared Redis that holds the jobs",
            file=sys.stderr,
        )
        return EXIT_USAGE
    min_age = settings.reconcile_min_age
    if args.min_age is not None:
        try:
            min_age = parse_duration(args.min_age)
        except ValueError as exc:
            print(f"handover: --min-age: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        result = asyncio.run(_reconcile(settings, min_age, dry_run=args.dry_run))
    except ReconcileError as exc:
        print(f"handover: storage reconcile: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(result.lines()))
    return 0


async def _reconcile(settings: Settings, min_age: timedelta, *, dry_run: bool) -> Reconciliation:
    async with open_reconciler(settings) as reconciler:
        return await reconciler.run(min_age=min_age, actor="cli", dry_run=dry_run)
