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
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from connectors.errors import ConnectorError, ConnectorLoadError, TransientError
from connectors.registry import ConnectorConfig, available_types, build_connectors
from jobs.resources import connector_configs, demo_connector_configs
from jobs.settings import Settings, parse_duration

EXIT_FAILED = 1
EXIT_USAGE = 2
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
MAX_NAME = 24  # keeps the generated code within 100 columns


class ScaffoldError(Exception):
    """The package cannot be scaffolded; the message says why."""


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


@dataclass(frozen=True)
class PackageNames:
    """The names a connector package derives from its type name (``acme-crm``)."""

    type_name: str
    distribution: str
    module: str
    class_name: str
    title: str

    @classmethod
    def for_type(cls, type_name: str) -> PackageNames:
        """Names for ``type_name``, which must be lowercase words joined by ``-``."""
        if not NAME_PATTERN.fullmatch(type_name) or len(type_name) > MAX_NAME:
            raise ScaffoldError(
                f"connector name {type_name!r}: use lowercase letters and digits in words joined "
                f"by '-', starting with a letter, e.g. acme-crm (at most {MAX_NAME} characters)"
            )
        words = type_name.split("-")
        return cls(
            type_name=type_name,
            distribution=f"handover-{type_name}",
            module="handover_" + "_".join(words),
            class_name="".join(word.capitalize() for word in words) + "Connector",
            title=" ".join(word.capitalize() for word in words),
        )


def scaffold(type_name: str, directory: Path | None = None) -> Path:
    """Write a connector package for ``type_name``; returns its directory."""
    names = PackageNames.for_type(type_name)
    target = directory if directory is not None else Path(names.distribution)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not an empty directory")
    values = {
        "type_name": names.type_name,
        "distribution": names.distribution,
        "module": names.module,
        "class_name": names.class_name,
        "title": names.title,
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{names.module}/__init__.py": PACKAGE_INIT,
        f"{names.module}/connector.py": CONNECTOR,
        f"{names.module}/py.typed": "",
        "tests/test_contract.py": CONTRACT_TESTS,
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
    return target


def next_steps(type_name: str, created: Path) -> str:
    """What to do after ``connectors new``."""
    names = PackageNames.for_type(type_name)
    return (
        f"Created {created}/ ({names.distribution}: connector type {type_name!r}).\n"
        "Next:\n"
        f"  pip install -e {created}          # next to Handover, in the same environment\n"
        f"  pytest {created}/tests            # the contract tests pass as generated\n"
        f"  edit {created}/{names.module}/connector.py: replace InMemoryClient with the "
        "processor's API\n"
        "  handover connectors list          # shows the new type\n"
        "Walk-through: docs/connectors.md"
    )


PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "A Handover connector for $title."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["handover"]

[project.optional-dependencies]
test = ["pytest>=8"]

# Handover finds the connector through this entry point: type name = "module:Class".
[project.entry-points."handover.connectors"]
$type_name = "$module.connector:$class_name"

[tool.setuptools]
packages = ["$module"]

[tool.setuptools.package-data]
$module = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.ruff]
line-length = 100
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "SIM", "RUF", "ASYNC", "PT"]
"""

README = """\
# $distribution

A Handover connector for $title: it exports what $title holds on a data subject
and erases it on request.

```sh
pip install -e .                 # in the environment Handover runs in
pytest                           # Handover's connector contract, run against this connector
handover connectors list         # shows the type $type_name
```

Configure it in Handover's TOML file (options after `type` reach the connector's
constructor as keyword arguments):

```toml
[connectors.$type_name]
type = "$type_name"
```

`$module/connector.py` stands the processor in with `InMemoryClient`; replace it
with calls to $title's API and keep the contract tests passing.
"""

PACKAGE_INIT = '''\
"""A Handover connector for $title."""

from $module.connector import $class_name

__all__ = ["$class_name"]
'''

CONNECTOR = '''\
"""$title for Handover: the data it holds on a subject, exported and erased.

Generated by ``handover connectors new $type_name``.
:class:`InMemoryClient` stands in for $title so the contract tests pass from
the start: replace it with the processor's API client and keep the connector's
promises —

- ``export`` yields a :class:`~connectors.Record` per record held on the subject,
  blocked ones included;
- ``erase`` deletes what it holds, blocks what a retention rule keeps, reports per
  dataset; with ``dry_run`` it only counts; run twice, it deletes nothing new;
- failures surface as :class:`~connectors.TransientError` (retrying may help) or
  :class:`~connectors.PermanentError` (it will not), mapped where the client is called;
- nothing about one request is kept on the instance: one connector serves many jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from connectors import (
    Connector,
    Dataset,
    DatasetErasure,
    ErasureReport,
    Item,
    Record,
    RestrictionReport,
    RetentionRule,
    Subject,
    TransientError,
)

_T = TypeVar("_T")


class InMemoryClient:
    """Stands in for $title's API; replace it with the real client.

    Holds ``records`` as ``{dataset: [record, ...]}``, each record with an ``id`` and
    the platform's ``user_id``. With ``online=False`` every call fails the way a
    network call fails.
    """

    def __init__(
        self, records: Mapping[str, Sequence[Mapping[str, Any]]], *, online: bool = True
    ) -> None:
        self._records = {name: [dict(row) for row in rows] for name, rows in records.items()}
        self._blocked: set[tuple[str, str]] = set()
        self._online = online

    async def ping(self) -> None:
        """Answer, or fail as an unreachable processor does."""
        self._connect()

    async def find(self, dataset: str, user_id: str) -> list[dict[str, Any]]:
        """The records of ``dataset`` held on ``user_id``."""
        self._connect()
        return [dict(row) for row in self._records.get(dataset, []) if row["user_id"] == user_id]

    async def delete(self, dataset: str, user_id: str) -> int:
        """Delete ``user_id``'s records of ``dataset``; returns how many went."""
        self._connect()
        rows = self._records.get(dataset, [])
        kept = [row for row in rows if row["user_id"] != user_id]
        self._records[dataset] = kept
        return len(rows) - len(kept)

    async def block(self, dataset: str, user_id: str) -> int:
        """Mark ``user_id``'s records of ``dataset`` restricted; returns how many."""
        held = await self.find(dataset, user_id)
        self._blocked.update((dataset, str(row["id"])) for row in held)
        return len(held)

    def _connect(self) -> None:
        if not self._online:
            raise ConnectionError("$title is unreachable")


class $class_name(Connector):
    """The subject's contact details and orders at $title."""

    categories: ClassVar[frozenset[str]] = frozenset({"contact", "economic"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "contacts",
            "contact",
            "the subject's contact details",
            ("id", "user_id", "email", "name"),
        ),
        Dataset(
            "orders", "economic", "what the subject ordered", ("id", "user_id", "item", "total")
        ),
    )

    def __init__(
        self,
        name: str,
        *,
        records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        online: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self.client = InMemoryClient(records or {}, online=online)

    async def check(self) -> None:
        """Raise when $title cannot be reached."""
        await self._call(self.client.ping())

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Yield every record $title holds on ``subject``."""
        for dataset in self.datasets:
            for row in await self._call(self.client.find(dataset.name, subject.id)):
                yield Record(dataset.name, row)

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """Delete the subject's records; block the datasets ``retention`` keeps."""
        entries = []
        for dataset in self.datasets:
            held = len(await self._call(self.client.find(dataset.name, subject.id)))
            if not held:
                continue
            rule = retention.get(dataset.name)
            if rule is not None:
                if not dry_run:
                    await self._call(self.client.block(dataset.name, subject.id))
                until = datetime.now(UTC) + rule.duration
                entries.append(
                    DatasetErasure(
                        dataset.name,
                        retained=held,
                        legal_basis=rule.legal_basis,
                        retained_until=until,
                    )
                )
                continue
            if not dry_run:
                held = await self._call(self.client.delete(dataset.name, subject.id))
            entries.append(DatasetErasure(dataset.name, deleted=held))
        return ErasureReport(tuple(entries))

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Block every record of the subject (Art. 18)."""
        restricted = {}
        for dataset in self.datasets:
            held = len(await self._call(self.client.find(dataset.name, subject.id)))
            if held and not dry_run:
                await self._call(self.client.block(dataset.name, subject.id))
            if held:
                restricted[dataset.name] = held
        return RestrictionReport(supported=True, restricted=restricted)

    async def _call(self, request: Awaitable[_T]) -> _T:
        """Await one client call; its failures become Handover's error classes.

        Map the real client's errors here: timeouts, dropped connections and 5xx to
        TransientError, 429 to RateLimited(retry_after=...), 401/403/404 and broken
        answers to PermanentError.
        """
        try:
            return await request
        except (ConnectionError, TimeoutError) as exc:
            raise TransientError(f"connector {self.name!r}: {exc}") from exc
'''

CONTRACT_TESTS = '''\
"""$title's connector against Handover's connector contract."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from connectors import Connector, RetentionRule, Subject
from connectors.testing import ConnectorContract

from $module import $class_name

NAME = "$type_name"
RECORDS: dict[str, list[dict[str, Any]]] = {
    "contacts": [
        {"id": "c-1", "user_id": "alice", "email": "alice@example.com", "name": "Alice"},
        {"id": "c-2", "user_id": "bob", "email": "bob@example.com", "name": "Bob"},
    ],
    "orders": [
        {"id": "o-1", "user_id": "alice", "item": "sensor kit", "total": "49.00"},
        {"id": "o-2", "user_id": "alice", "item": "gateway", "total": "129.00"},
        {"id": "o-3", "user_id": "bob", "item": "gateway", "total": "129.00"},
    ],
}


class Test$class_name(ConnectorContract):
    """Orders are kept for the tax authorities and blocked; contacts are deleted."""

    async def make_connector(self) -> Connector:
        return $class_name(NAME, records=RECORDS)

    def subject_with_data(self) -> Subject:
        return Subject("alice", email="alice@example.com")

    def retention(self) -> Mapping[str, RetentionRule]:
        return {"orders": RetentionRule("tax law: orders are kept 10 years", timedelta(days=3653))}

    async def make_failing_connector(self) -> Connector | None:
        return $class_name(NAME, records=RECORDS, online=False)
'''
