"""The ``sql`` connector's options, parsed from TOML into checked table specs.

:class:`SqlOptions` reads the connector's own options (``url``, ``hash_key``,
``connect_timeout``, ``pool_size``, ``tables``, ``provides``, ``objection``); each
``[[tables]]`` entry becomes a :class:`TableSpec`, ``objection`` an :class:`ObjectionSpec`,
checked but not yet bound to the database's schema (that is :mod:`connectors.sql.schema`'s
work). Every bad option raises a one-line :class:`~connectors.errors.PermanentError`
naming the connector, the table and what is wrong, when the connector is built. Table
and column names must match a strict pattern, so they can be quoted by the dialect and
nothing else.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from connectors.errors import PermanentError
from connectors.items import Series
from connectors.reports import RetentionRule, ValueType

_Strategy = Literal["delete", "anonymise", "retain"]
_Action = Literal["null", "hash", "fixed", "keep"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_IDENTIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_MIN_HASH_KEY = 32

_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mariadb+aiomysql": "mysql+aiomysql",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
#: The drivers installed only with a package extra: their module, and the extra.
_OPTIONAL_DRIVERS = {
    "postgresql+asyncpg": ("asyncpg", "postgres"),
    "mysql+aiomysql": ("aiomysql", "mysql"),
}

_TABLE_KEYS = frozenset(
    {
        "table",
        "dataset",
        "category",
        "description",
        "columns",
        "order_by",
        "subject_column",
        "identity",
        "through",
        "erase",
        "anonymise",
        "block_column",
        "legal_basis",
        "retained_for_days",
        "column_descriptions",
        "series",
        "time_column",
        "rectifiable",
    }
)
_VALUE_TYPES = ("text", "email", "integer", "number", "boolean")


@dataclass(frozen=True, slots=True)
class _Rule:
    """What anonymisation does to one column; ``value`` is the ``fixed`` one."""

    action: _Action
    value: Any = None


@dataclass(frozen=True, slots=True)
class _Hop:
    """One step of a chain: ``column`` of the previous table refers to ``table.references``."""

    column: str
    table: str
    references: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One configured table, checked but not yet bound to the database's schema."""

    table: str
    dataset: str
    category: str
    description: str
    columns: tuple[str, ...]
    order_by: tuple[str, ...]
    subject_column: str
    identity: str
    through: tuple[_Hop, ...]
    erase: _Strategy
    anonymise: Mapping[str, _Rule]
    block_column: str | None
    retention: RetentionRule | None
    column_descriptions: Mapping[str, str] = field(default_factory=dict)
    series: Series | None = None
    #: The column dating each row: an export's time range is applied to it.
    time_column: str | None = None
    #: Columns the subject may have corrected (GDPR Art. 16), and the type of their values.
    rectifiable: Mapping[str, ValueType] = field(default_factory=dict)

    @property
    def chain(self) -> tuple[str, ...]:
        """The tables a row's reference leads through to the subject's column."""
        return tuple(hop.table for hop in self.through)

    @property
    def changed_columns(self) -> tuple[str, ...]:
        """The columns anonymisation writes (every rule but ``keep``)."""
        return tuple(name for name, rule in self.anonymise.items() if rule.action != "keep")


@dataclass(frozen=True, slots=True)
class Source:
    """Where an identifier this connector ``provides`` is read: a column of a configured table."""

    table: str
    column: str


@dataclass(frozen=True, slots=True)
class ObjectionSpec:
    """Where an objection (GDPR Art. 21) is recorded: a consent table of the connector's.

    ``purposes`` maps each of Handover's purposes to the values of ``purpose_column``
    that stand for it; objecting sets ``granted_column`` to false on those rows (and
    ``updated_column``, if named, to the time).
    """

    table: str
    purpose_column: str
    granted_column: str
    updated_column: str | None
    purposes: Mapping[str, tuple[str, ...]]


_OBJECTION_KEYS = frozenset(
    {"table", "purpose_column", "granted_column", "updated_column", "purposes"}
)
_PURPOSE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


class SqlOptions:
    """Checks one ``sql`` connector's options, each failure a one-line PermanentError naming it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _fail(self, message: str) -> PermanentError:
        return PermanentError(f"connector {self.name!r}: {message}")

    def parse_url(self, raw: object) -> URL:
        """``url``: a supported database URL, set to the async driver it is served by."""
        if not isinstance(raw, str) or not raw.strip():
            raise self._fail('needs url = "postgresql://…", "mysql://…" or "sqlite:///path"')
        try:
            url = make_url(raw.strip())
        except ArgumentError as exc:
            raise self._fail(f"url is not a database URL: {exc}") from None
        driver = _DRIVERS.get(url.drivername)
        if driver is None:
            raise self._fail(
                f"url scheme {url.drivername!r} is not supported;"
                " use postgresql://, mysql://, mariadb:// or sqlite:///path"
            )
        module, extra = _OPTIONAL_DRIVERS.get(driver, ("", ""))
        if module and importlib.util.find_spec(module) is None:
            raise self._fail(
                f"url {url.drivername}:// needs the {module} driver, which is not installed: "
                f"pip install 'handover[{extra}]'"
            )
        url = url.set(drivername=driver)
        if driver == "mysql+aiomysql" and "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        if driver == "sqlite+aiosqlite":
            url = self._sqlite_url(url)
        return url

    def _sqlite_url(self, url: URL) -> URL:
        """Open the file read-write without creating it: a wrong path fails instead."""
        database = url.database or ""
        if database.startswith("file:"):
            return url.update_query_dict({"uri": "true"})
        if database in {"", ":memory:"}:
            raise self._fail("url must name a SQLite database file (sqlite:///path/to/file)")
        uri = Path(database).expanduser().resolve().as_uri()
        return url.set(database=uri, query={"mode": "rw", **url.query, "uri": "true"})

    def parse_hash_key(self, raw: object) -> bytes | None:
        """``hash_key``: the key of the ``hash`` anonymisation, or None when not given."""
        if raw is None:
            return None
        if not isinstance(raw, str) or len(raw) < _MIN_HASH_KEY:
            raise self._fail(f"hash_key must be text of at least {_MIN_HASH_KEY} characters")
        return raw.encode()

    def positive_number(self, option: str, raw: object, *, whole: bool = False) -> float:
        """A number of seconds above zero, or with ``whole`` a whole number above zero."""
        kinds = (int,) if whole else (int, float)
        if isinstance(raw, bool) or not isinstance(raw, kinds) or raw <= 0:
            kind = "a whole number" if whole else "a number of seconds"
            raise self._fail(f"{option} must be {kind} above zero, got {raw!r}")
        return float(raw)

    def parse_tables(self, raw: object, *, hash_key: bool) -> tuple[TableSpec, ...]:
        """``tables``: one spec each, tables and datasets distinct, chains without a cycle."""
        if not isinstance(raw, list | tuple) or not raw:
            raise self._fail("needs tables = [...], one table of options per database table")
        specs = []
        for index, table in enumerate(raw):
            label = table.get("table") if isinstance(table, Mapping) else None
            label = label if isinstance(label, str) else f"#{index + 1}"
            try:
                specs.append(_parse_table(table, hash_key=hash_key))
            except ValueError as exc:
                raise self._fail(f"table {label!r}: {exc}") from None
        self._check_uniqueness(specs)
        try:
            children_first(
                [spec.table for spec in specs],
                [(parent, spec.table) for spec in specs for parent in spec.chain],
            )
        except CycleError as exc:
            cycle = " → ".join(exc.args[1])
            raise self._fail(f"tables reach the subject through each other: {cycle}") from None
        self._check_rectifiable(specs)
        return tuple(specs)

    def _check_rectifiable(self, specs: Sequence[TableSpec]) -> None:
        """Refuse a rectifiable column that finds the subject's rows for any table: a
        subject column, a ``through`` link or the column it references."""
        finding: dict[tuple[str, str], str] = {}
        for spec in specs:
            source = spec.table
            for hop in spec.through:
                finding.setdefault((source, hop.column), f"links {source} to {hop.table}")
                finding.setdefault(
                    (hop.table, hop.references), f"is referenced by {source}.{hop.column}"
                )
                source = hop.table
            finding.setdefault(
                (source, spec.subject_column), f"finds the subject's rows of {spec.table}"
            )
        for spec in specs:
            for column in spec.rectifiable:
                why = finding.get((spec.table, column))
                if why is not None:
                    raise self._fail(
                        f"table {spec.table!r}: rectifiable: {column} {why} and cannot be rectified"
                    )

    def parse_provides(self, raw: object, tables: Sequence[TableSpec]) -> dict[str, Source]:
        """``provides = { name = "table.column" }``: each table one of ours, keyed otherwise."""
        if raw is None:
            return {}
        example = '{ email = "users.email" }'
        if not isinstance(raw, Mapping) or not raw:
            raise self._fail(
                f"provides must name identifiers and the columns holding them, such as {example}"
            )
        by_table = {spec.table: spec for spec in tables}
        sources = {}
        for name, where in raw.items():
            if not isinstance(name, str) or not _IDENTIFIER_NAME.fullmatch(name) or name == "id":
                raise self._fail(
                    f"provides: {name!r} cannot name an identifier (a letter, then letters, "
                    "digits, _ . -; not 'id', which every subject has)"
                )
            table, dot, column = where.partition(".") if isinstance(where, str) else ("", "", "")
            if not dot or not _IDENTIFIER.fullmatch(table) or not _IDENTIFIER.fullmatch(column):
                raise self._fail(f'provides.{name} must be "table.column", got {where!r}')
            spec = by_table.get(table)
            if spec is None:
                raise self._fail(
                    f"provides.{name}: table {table!r} is not one of the connector's tables "
                    f"({', '.join(by_table)})"
                )
            if spec.identity == name:
                raise self._fail(
                    f"provides.{name}: table {table!r} finds the subject by {name} itself"
                )
            sources[name] = Source(table, column)
        return sources

    def parse_objection(self, raw: object, tables: Sequence[TableSpec]) -> ObjectionSpec | None:
        """``objection``: the consent table objections are recorded in, and its purposes."""
        if raw is None:
            return None
        example = (
            'objection = { table = "consents", purpose_column = "purpose", granted_column = '
            '"granted", purposes = { direct_marketing = ["marketing_email"] } }'
        )
        if not isinstance(raw, Mapping):
            raise self._fail(f"objection must be a table of options, such as {example}")
        unknown = sorted(set(raw) - _OBJECTION_KEYS)
        if unknown:
            raise self._fail(
                f"objection: unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_OBJECTION_KEYS))}"
            )
        try:
            table = _identifier(raw.get("table"), "objection.table")
            spec = ObjectionSpec(
                table=table,
                purpose_column=_identifier(raw.get("purpose_column"), "objection.purpose_column"),
                granted_column=_identifier(raw.get("granted_column"), "objection.granted_column"),
                updated_column=_optional_identifier(
                    raw.get("updated_column"), "objection.updated_column"
                ),
                purposes=_parse_purposes(raw.get("purposes")),
            )
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        if table not in {t.table for t in tables}:
            raise self._fail(
                f"objection.table: {table!r} is not one of the connector's tables "
                f"({', '.join(t.table for t in tables)})"
            )
        return spec

    def _check_uniqueness(self, specs: Sequence[TableSpec]) -> None:
        tables: set[str] = set()
        datasets: set[str] = set()
        for spec in specs:
            if spec.table in tables:
                raise self._fail(f"table {spec.table!r}: configured twice")
            if spec.dataset in datasets:
                raise self._fail(f"table {spec.table!r}: dataset {spec.dataset!r} is already used")
            tables.add(spec.table)
            datasets.add(spec.dataset)


# -- one [[tables]] entry ---------------------------------------------------------


def _parse_table(raw: object, *, hash_key: bool) -> TableSpec:
    """One ``[[tables]]`` entry; a ValueError says what is wrong (the caller names the table)."""
    if not isinstance(raw, Mapping):
        raise ValueError("must be a table of options")
    unknown = sorted(set(raw) - _TABLE_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TABLE_KEYS))}"
        )
    table = _identifier(raw.get("table"), "table")
    dataset = raw.get("dataset", table)
    if not isinstance(dataset, str) or not _DATASET_NAME.fullmatch(dataset):
        raise ValueError(f"dataset must be letters, digits, - or _, got {dataset!r}")
    category = raw.get("category")
    if not isinstance(category, str) or not category.strip():
        raise ValueError('needs category = "..." (identification, contact, economic, device, …)')
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"description must be text, got {description!r}")
    identity = raw.get("identity", "id")
    if not isinstance(identity, str) or not identity:
        raise ValueError(f'identity must be "id", "email" or an identity name, got {identity!r}')
    erase = raw.get("erase")
    if erase not in ("delete", "anonymise", "retain"):
        raise ValueError(f'erase must be "delete", "anonymise" or "retain", got {erase!r}')
    spec = TableSpec(
        table=table,
        dataset=dataset,
        category=category.strip(),
        description=description,
        columns=_identifiers(raw.get("columns", []), "columns"),
        order_by=_identifiers(raw.get("order_by", []), "order_by"),
        subject_column=_identifier(raw.get("subject_column"), "subject_column"),
        identity=identity,
        through=_parse_through(raw.get("through", []), table),
        erase=erase,
        anonymise=_parse_anonymise(raw.get("anonymise"), erase, hash_key=hash_key),
        block_column=_optional_identifier(raw.get("block_column"), "block_column"),
        retention=_parse_retention(raw, erase),
        column_descriptions=_parse_column_descriptions(raw.get("column_descriptions", {})),
        series=_parse_series(raw.get("series")),
        time_column=_optional_identifier(raw.get("time_column"), "time_column"),
        rectifiable=_parse_rectifiable(raw.get("rectifiable")),
    )
    fixed = {spec.subject_column, spec.block_column} & set(spec.rectifiable)
    if fixed:
        raise ValueError(
            f"rectifiable: {', '.join(sorted(c for c in fixed if c))} finds or blocks the "
            "subject's rows and cannot be rectified"
        )
    if erase == "retain" and spec.block_column is None:
        raise ValueError('erase = "retain" needs a block_column to mark the kept rows restricted')
    charted = (spec.series.time, *spec.series.values, spec.series.by) if spec.series else ()
    unlisted = [c for c in (*spec.column_descriptions, *charted) if c and c not in spec.columns]
    if spec.columns and unlisted:
        raise ValueError(f"column_descriptions and series name {unlisted[0]!r}, not in columns")
    return spec


def _identifier(value: object, what: str) -> str:
    if value is None:
        raise ValueError(f'needs {what} = "..."')
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} must be a name of letters, digits and _, got {value!r}")
    return value


def _optional_identifier(value: object, what: str) -> str | None:
    return None if value is None else _identifier(value, what)


def _parse_column_descriptions(value: object) -> dict[str, str]:
    """``column_descriptions = { ts = "when the reading was taken", … }``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"column_descriptions must be a table of column = text, got {value!r}")
    described = {}
    for column, text in value.items():
        _identifier(column, "column_descriptions")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"column_descriptions: {column} needs a text, got {text!r}")
        described[column] = text.strip()
    return described


def _parse_series(value: object) -> Series | None:
    """``series = { time = "ts", values = ["temperature"], by = "device_id" }``, if any."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"time", "values", "by"}:
        raise ValueError(
            f'series must be {{ time = "…", values = ["…"], by = "…" }}, got {value!r}'
        )
    values = _identifiers(value.get("values", []), "series.values")
    if not values:
        raise ValueError("series.values must name at least one numeric column")
    return Series(
        time=_identifier(value.get("time"), "series.time"),
        values=values,
        by=_optional_identifier(value.get("by"), "series.by"),
    )


def _identifiers(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list of column names, got {value!r}")
    names = tuple(_identifier(item, what) for item in value)
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names a column twice")
    return names


def _parse_purposes(value: object) -> dict[str, tuple[str, ...]]:
    """``purposes = { direct_marketing = ["marketing_email"], … }``, each a non-empty list."""
    example = '{ direct_marketing = ["marketing_email"] }'
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            f"objection.purposes must map Handover's purposes to values, e.g. {example}"
        )
    purposes = {}
    for name, targets in value.items():
        if not isinstance(name, str) or not _PURPOSE_NAME.fullmatch(name):
            raise ValueError(
                f"objection.purposes: {name!r} is not a purpose name (lowercase letters, digits, _)"
            )
        if (
            not isinstance(targets, list | tuple)
            or not targets
            or not all(isinstance(t, str) and t for t in targets)
        ):
            raise ValueError(
                f"objection.purposes.{name} must be a list of the values standing for it, "
                f"got {targets!r}"
            )
        purposes[name] = tuple(targets)
    return purposes


def _parse_rectifiable(value: object) -> dict[str, ValueType]:
    """``rectifiable = { name = "text", email = "email" }``: column → type of its values."""
    if value is None:
        return {}
    example = '{ name = "text", email = "email" }'
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"rectifiable must map columns to value types, such as {example}")
    parsed: dict[str, ValueType] = {}
    for column, kind in value.items():
        name = _identifier(column, "rectifiable column")
        if kind not in _VALUE_TYPES:
            raise ValueError(
                f"rectifiable.{name} must be one of {', '.join(_VALUE_TYPES)}, got {kind!r}"
            )
        parsed[name] = kind
    return parsed


def _parse_through(value: object, table: str) -> tuple[_Hop, ...]:
    example = '{ column = "device_id", references = "devices.id" }'
    if not isinstance(value, list | tuple):
        raise ValueError(f"through must be a list of references such as [{example}]")
    hops = []
    visited = {table}
    for index, raw in enumerate(value):
        where = f"through[{index}]"
        if not isinstance(raw, Mapping) or set(raw) != {"column", "references"}:
            raise ValueError(f"{where} must be {example}")
        column = _identifier(raw["column"], f"{where}.column")
        target, dot, referenced = str(raw["references"]).partition(".")
        if not dot:
            raise ValueError(
                f'{where}.references must be "table.column", got {raw["references"]!r}'
            )
        target = _identifier(target, f"{where}.references table")
        referenced = _identifier(referenced, f"{where}.references column")
        if target in visited:
            raise ValueError(
                f"{where} leads back to table {target!r}; a chain visits each table once"
            )
        visited.add(target)
        hops.append(_Hop(column=column, table=target, references=referenced))
    return tuple(hops)


def _parse_anonymise(value: object, erase: object, *, hash_key: bool) -> Mapping[str, _Rule]:
    if erase != "anonymise":
        if value is not None:
            raise ValueError('anonymise rules need erase = "anonymise"')
        return {}
    if not isinstance(value, Mapping) or not value:
        raise ValueError(
            'erase = "anonymise" needs anonymise = { column = "null" | "hash" | "keep"'
            " | { fixed = value }, ... }"
        )
    rules = {}
    for column, raw in value.items():
        name = _identifier(column, "anonymise column")
        if isinstance(raw, Mapping) and set(raw) == {"fixed"}:
            rules[name] = _Rule("fixed", raw["fixed"])
        elif raw in ("null", "hash", "keep"):
            rules[name] = _Rule(raw)
        else:
            raise ValueError(
                f'anonymise.{name} must be "null", "hash", "keep" or {{ fixed = value }},'
                f" got {raw!r}"
            )
    if all(rule.action == "keep" for rule in rules.values()):
        raise ValueError("anonymise keeps every column; name at least one to null, hash or fix")
    if not hash_key and any(rule.action == "hash" for rule in rules.values()):
        raise ValueError("a hashed column needs the connector's hash_key option")
    return rules


def _parse_retention(raw: Mapping[str, Any], erase: object) -> RetentionRule | None:
    legal_basis, days = raw.get("legal_basis"), raw.get("retained_for_days")
    if erase != "retain":
        if legal_basis is not None or days is not None:
            raise ValueError('legal_basis and retained_for_days go with erase = "retain"')
        return None
    if not isinstance(legal_basis, str) or not legal_basis.strip():
        raise ValueError('erase = "retain" needs legal_basis = "why the law keeps these rows"')
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise ValueError(f'erase = "retain" needs retained_for_days = a whole number, got {days!r}')
    return RetentionRule(legal_basis.strip(), timedelta(days=days))


def children_first(tables: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
    """``tables`` ordered so that for each (parent, child) edge the child comes first."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for table in tables:
        sorter.add(table)
    for parent, child in edges:
        sorter.add(parent, child)
    return list(sorter.static_order())
