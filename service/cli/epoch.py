"""``handover epoch``: whether Redis lost its data, and the operator's acknowledgement of it.

::

    handover epoch show          the epoch Redis is in; exit 1 while a loss awaits acknowledgement
    handover epoch acknowledge   record that the loss is known and dealt with: /readyz recovers

A loss is found by the processes that run across it (:mod:`jobs.epoch`): they log it
and ``/readyz`` answers 503 on every API until someone acknowledges it here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from jobs.epoch import Epoch, open_epochs
from jobs.queue import REDIS_UNAVAILABLE
from jobs.resources import NAMESPACE, StartupError
from jobs.settings import Settings

EXIT_FAILED = 1
EXIT_USAGE = 2
NO_MARKER = (
    "no epoch marker: no Handover process has started on this Redis since it was emptied "
    "(each one begins an epoch when it starts)"
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``epoch`` and its subcommands to the ``handover`` parser."""
    epoch = commands.add_parser(
        "epoch", help="whether Redis lost its data; acknowledge a loss (needs HANDOVER_REDIS_URL)"
    )
    actions = epoch.add_subparsers(dest="epoch_command", required=True, metavar="ACTION")
    actions.add_parser("show", help="the epoch Redis is in, and any loss it began with")
    actions.add_parser(
        "acknowledge", help="record that Redis's loss of data is known: /readyz recovers"
    )


def run(args: argparse.Namespace) -> int:
    """Carry out ``handover epoch …``; returns the exit status."""
    settings = Settings.load()
    if settings.redis_url is None:
        print(
            "handover: HANDOVER_REDIS_URL: the epoch marker lives in the shared Redis",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return asyncio.run(_run(settings.redis_url.reveal(), args.epoch_command))
    except StartupError as exc:
        print(f"handover: epoch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except REDIS_UNAVAILABLE as exc:
        print(f"handover: epoch: Redis does not answer: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _run(redis_url: str, command: str) -> int:
    async with open_epochs(redis_url, NAMESPACE) as epochs:
        if command == "show":
            epoch = await epochs.current()
        else:
            epoch = await epochs.acknowledge()
    if epoch is None:
        print(f"handover: epoch: {NO_MARKER}", file=sys.stderr)
        return EXIT_FAILED
    print(describe(epoch))
    return EXIT_FAILED if epoch.unacknowledged_loss is not None else 0


def describe(epoch: Epoch) -> str:
    """The epoch, its loss if it began with one, and whether that was acknowledged."""
    begun = f"epoch {epoch.id}, begun {epoch.created_at:%Y-%m-%d %H:%M:%S} UTC"
    if epoch.lost is None:
        return f"{begun}: intact"
    if epoch.acknowledged_at is None:
        return (
            f"{begun} after a loss: {epoch.lost.describe()}; not acknowledged: /readyz answers "
            "503 until `handover epoch acknowledge`"
        )
    return (
        f"{begun} after a loss: {epoch.lost.describe()}; acknowledged "
        f"{epoch.acknowledged_at:%Y-%m-%d %H:%M:%S} UTC"
    )
