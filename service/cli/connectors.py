"""``handover connectors``: scaffold a connector package, list connectors, check their health.

::

    handover connectors new NAME [--dir DIR]    an installable package: connector, entry
                                                point and contract tests that pass
    handover connectors list                    installed connector types, configured connectors
    handover connectors check [--timeout 30s]   check() of each configured connector;
                                                exit 1 when one fails

``list`` and ``check`` read the same configuration as ``handover serve``; with no
connectors configured they show the demo set.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from connectors.errors import ConnectorError, ConnectorLoadError, TransientError
from connectors.registry import ConnectorConfig, available_types, build_connectors
from jobs.resources import connector_configs, demo_connector_configs
from jobs.settings import Settings, parse_duration
from service.cli.scaffold import ScaffoldError, next_steps, scaffold

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``connectors`` and its subcommands to the ``handover`` parser."""
    connectors = commands.add_parser("connectors", help="scaffold, list and check connectors")
    actions = connectors.add_subparsers(dest="connectors_command", required=True, metavar="ACTION")
    new = actions.add_parser(
        "new", help="scaffold an installable connector package with passing contract tests"
    )
    new.add_argument("name", help="the connector type, e.g. acme-crm (lowercase, digits, -)")
    new.add_argument("--dir", type=Path, help="where to create it (default: ./handover-NAME)")
    actions.add_parser("list", help="installed connector types and configured connectors")
    check = actions.add_parser("check", help="run check() on every configured connector")
    check.add_argument("--timeout", default="30s", help="per connector, e.g. 10s (default 30s)")


def run(args: argparse.Namespace) -> int:
    """Carry out ``handover connectors …``; returns the exit status."""
    if args.connectors_command == "new":
        try:
            created = scaffold(args.name, args.dir)
        except ScaffoldError as exc:
            print(f"handover: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(next_steps(args.name, created))
        return 0
    settings = Settings.load()
    if args.connectors_command == "list":
        print(list_connectors(settings))
        return 0
    try:
        seconds = parse_duration(args.timeout).total_seconds()
    except ValueError as exc:
        print(f"handover: --timeout: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report, healthy = asyncio.run(check_connectors(connector_configs(settings), seconds))
    print(report)
    return 0 if healthy else EXIT_FAILED


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def list_connectors(settings: Settings) -> str:
    """The installed types (entry points, not imported) and the configured connectors."""
    types = available_types()
    installed = [
        [
            name,
            entry_point.dist.name if entry_point.dist else "?",
            entry_point.dist.version if entry_point.dist else "?",
            entry_point.value,
        ]
        for name, entry_point in sorted(types.items())
    ]
    configs = settings.connectors or demo_connector_configs(settings)
    configured = [
        [config.name, config.type, "yes" if config.type in types else "no: not installed"]
        for config in configs
    ]
    heading = "Configured connectors" if settings.connectors else "Demo connectors (none set)"
    return (
        "Installed connector types\n"
        f"{table(['TYPE', 'DISTRIBUTION', 'VERSION', 'OBJECT'], installed)}\n\n"
        f"{heading}\n"
        f"{table(['NAME', 'TYPE', 'INSTALLED'], configured)}"
    )


@dataclass(frozen=True)
class Health:
    """What checking one configured connector found; ``problem`` is ``None`` when healthy."""

    config: ConnectorConfig
    problem: str | None = None


async def check_one(config: ConnectorConfig, seconds: float) -> Health:
    """Build, open, check and close one connector; whatever goes wrong is described."""
    try:
        connector = build_connectors([config])[config.name]
    except ConnectorLoadError as exc:
        return Health(config, f"cannot load: {exc}")
    try:
        async with asyncio.timeout(seconds):
            await connector.open()
            try:
                await connector.check()
            finally:
                await connector.close()
    except TimeoutError:
        return Health(config, f"no answer within {seconds:g}s")
    except TransientError as exc:
        return Health(config, f"transient: {exc}")
    except ConnectorError as exc:
        return Health(config, f"permanent: {exc}")
    except Exception as exc:
        return Health(config, f"internal: {type(exc).__name__}: {exc}")
    return Health(config)


async def check_connectors(configs: Sequence[ConnectorConfig], seconds: float) -> tuple[str, bool]:
    """Check every connector at once, ``seconds`` at most each.

    Returns the report and whether every connector is healthy.
    """
    results = await asyncio.gather(*(check_one(config, seconds) for config in configs))
    rows = [
        [h.config.name, h.config.type, "ok" if h.problem is None else "error", h.problem or ""]
        for h in results
    ]
    failed = sum(h.problem is not None for h in results)
    summary = f"{len(results) - failed} of {len(results)} connectors ok"
    return f"{table(['NAME', 'TYPE', 'STATUS', 'DETAIL'], rows)}\n{summary}", failed == 0
