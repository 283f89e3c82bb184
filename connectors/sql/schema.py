"""The ``sql`` connector's configured tables, bound to the database's schema.

For every request the configured tables (and the tables their chains lead
through) are reflected afresh, so a migrated schema is seen at once: :func:`bind`
checks that every table and column the configuration names exists, naming all
that are missing, and that a table can take its erasure strategy (``anonymise``
needs a primary key and columns wide enough for a hash). :func:`reach` builds the
condition selecting the subject's rows, following a chain of references to the
table holding the subject's identifier; :func:`erase_order` puts children before
parents, along the chains and then the database's foreign keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from graphlib import CycleError
from typing import Any

from sqlalchemy import Column, ColumnElement, MetaData, Table, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from connectors.errors import PermanentError, Unidentified
from connectors.items import Subject
from connectors.sql.config import Source, TableSpec, children_first

_HASH_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Bound:
    """A configured table bound to its reflected schema for one operation."""

    spec: TableSpec
    table: Table
    path: tuple[Table, ...]
    columns: tuple[str, ...]
    order_by: tuple[str, ...]

    @property
    def subject_column(self) -> Column[Any]:
        """The column holding the subject's identifier, on the last table of the chain."""
        holder = self.path[-1] if self.path else self.table
        return holder.c[self.spec.subject_column]


async def bind(
    connection: AsyncConnection,
    tables: Sequence[TableSpec],
    sources: Mapping[str, Source],
    *,
    connector: str,
) -> tuple[Bound, ...]:
    """Reflect the configured tables and check them; raise naming everything missing."""
    names = list(dict.fromkeys(n for s in tables for n in (s.table, *s.chain)))
    metadata, missing_tables = await connection.run_sync(_reflect, names)
    missing = [f"table {name!r}" for name in missing_tables]
    for spec in tables:
        missing.extend(_missing_columns(spec, metadata))
    for source in sources.values():
        reflected = metadata.tables.get(source.table)
        if reflected is not None and source.column not in reflected.c:
            missing.append(f"column '{source.table}.{source.column}'")
    if missing:
        found = ", ".join(dict.fromkeys(missing))
        raise PermanentError(f"connector {connector!r}: missing in the database: {found}")
    return tuple(_bound(spec, metadata, connector=connector) for spec in tables)


def _bound(spec: TableSpec, metadata: MetaData, *, connector: str) -> Bound:
    table = metadata.tables[spec.table]
    key = tuple(str(column.name) for column in table.primary_key.columns)
    columns = spec.columns or tuple(str(column.name) for column in table.columns)
    problem = _schema_problem(spec, table, key)
    if problem:
        raise PermanentError(f"connector {connector!r}: table {spec.table!r}: {problem}")
    return Bound(
        spec=spec,
        table=table,
        path=tuple(metadata.tables[name] for name in spec.chain),
        columns=columns,
        order_by=spec.order_by or key,
    )


def reach(bound: Bound, subject: Subject, *, connector: str) -> ColumnElement[bool] | None:
    """The condition selecting the subject's rows; None when the subject cannot be there.

    A subject without the identifier the table is keyed by raises :class:`Unidentified`:
    matching nothing would claim the table holds nothing on them.
    """
    identifier = subject.identifier(bound.spec.identity)
    if not identifier:
        raise Unidentified(connector, (bound.spec.identity,))
    value = _column_value(identifier, bound.subject_column)
    if value is None:
        return None
    condition: ColumnElement[bool] = bound.subject_column == value
    tables = (bound.table, *bound.path)
    for index in reversed(range(len(bound.spec.through))):
        hop = bound.spec.through[index]
        target = tables[index + 1]
        referenced = select(target.c[hop.references]).where(condition)
        condition = tables[index].c[hop.column].in_(referenced)
    return condition


def erase_order(bound_tables: Sequence[Bound]) -> list[Bound]:
    """Children before parents: chains first, then the database's foreign keys."""
    by_name = {bound.spec.table: bound for bound in bound_tables}
    chain_edges = [
        (parent, bound.spec.table)
        for bound in bound_tables
        for parent in bound.spec.chain
        if parent in by_name
    ]
    key_edges = [
        (parent, bound.spec.table)
        for bound in bound_tables
        for parent in _referenced_tables(bound.table)
        if parent in by_name and parent != bound.spec.table
    ]
    try:
        order = children_first(list(by_name), chain_edges + key_edges)
    except CycleError:
        order = children_first(list(by_name), chain_edges)
    return [by_name[name] for name in order]


def _reflect(connection: Connection, names: Sequence[str]) -> tuple[MetaData, list[str]]:
    inspector = inspect(connection)
    missing = [name for name in names if not inspector.has_table(name)]
    metadata = MetaData()
    present = [name for name in names if name not in missing]
    if present:
        metadata.reflect(connection, only=present, views=True, resolve_fks=False)
    return metadata, missing


def _missing_columns(spec: TableSpec, metadata: MetaData) -> Iterator[str]:
    """``column 'table.name'`` for every configured column the database lacks."""
    wanted: list[tuple[str, str]] = [
        (spec.table, name)
        for name in (
            *spec.columns,
            *spec.order_by,
            *spec.anonymise,
            *spec.rectifiable,
            spec.block_column,
            spec.time_column,
        )
        if name is not None
    ]
    source = spec.table
    for hop in spec.through:
        wanted += [(source, hop.column), (hop.table, hop.references)]
        source = hop.table
    wanted.append((source, spec.subject_column))
    for table, column in wanted:
        reflected = metadata.tables.get(table)
        if reflected is not None and column not in reflected.c:
            yield f"column '{table}.{column}'"


def _schema_problem(spec: TableSpec, table: Table, key: tuple[str, ...]) -> str | None:
    """What makes a present table unusable for its strategy or its rectifiable columns,
    if anything."""
    if spec.rectifiable and not key:
        return "rectifiable columns need a primary key to update rows one by one"
    for name in spec.rectifiable:
        if name in key:
            return f"column {name!r} is part of the primary key and cannot be rectified"
    if spec.erase != "anonymise":
        return None
    if not key:
        return "anonymise needs a primary key to update rows one by one"
    for name in spec.changed_columns:
        if name in key:
            return f"column {name!r} is part of the primary key and cannot be anonymised"
        column = table.c[name]
        if spec.anonymise[name].action == "hash" and not _holds_hash(column):
            return f"column {name!r} cannot hold a {_HASH_LENGTH}-character hash"
    return None


def _holds_hash(column: Column[Any]) -> bool:
    length = getattr(column.type, "length", None)
    return python_type(column) is str and (length is None or length >= _HASH_LENGTH)


def python_type(column: Column[Any]) -> type | None:
    """The Python type of ``column``'s values, or None when its SQL type does not say."""
    try:
        kind: type = column.type.python_type
    except NotImplementedError:
        return None
    return kind


def _referenced_tables(table: Table) -> Iterator[str]:
    for foreign_key in table.foreign_keys:
        yield foreign_key.target_fullname.split(".")[-2]


def _column_value(value: str, column: Column[Any]) -> Any:
    """The subject's identifier as the column holds it, or None when it cannot match."""
    if python_type(column) is not int:
        return value
    try:
        return int(value)
    except ValueError:
        return None
