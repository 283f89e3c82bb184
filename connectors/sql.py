"""The ``sql`` connector: a PostgreSQL, MariaDB/MySQL or SQLite database, declared in TOML.

Each configured table becomes one dataset. A table reaches the subject either
through a column of its own holding the subject's id, or through a chain of
references to the table that does (``telemetry.device_id → devices.id``, where
``devices.owner_id`` holds the subject). Erasure deletes, anonymises (per column:
``null``, ``hash``, ``fixed``, ``keep``) or retains-and-blocks each table, children
before parents, in one transaction. The full TOML reference with a worked example
is ``docs/sql-connector.md``; in short::

    [connectors.platform]
    type = "sql"
    url = "postgresql://handover:secret@db.internal/platform"
    hash_key = "at least 32 characters, keyed SHA-256 for anonymised columns"

    [[connectors.platform.tables]]
    table = "users"
    dataset = "profile"
    category = "identification"
    subject_column = "id"
    erase = "anonymise"
    anonymise = { email = "hash", name = "null", country = { fixed = "XX" } }

    [[connectors.platform.tables]]
    table = "telemetry"
    category = "telemetry"
    through = [{ column = "device_id", references = "devices.id" }]
    subject_column = "owner_id"
    erase = "delete"

Identity: a table finds the subject by the identifier its ``identity`` names (the
subject's ``id`` by default, or ``email``, or an identity such as
``phone_number``); the connector's ``identifiers`` are those of its tables. A
subject without a table's identifier is not answered "nothing held": the request
raises :class:`~connectors.errors.Unidentified`. With ``provides = { email =
"users.email" }`` the connector is also an *identity source*: :meth:`SqlConnector.resolve`
reads the subject's email from that column of its rows, for the processors keyed
by email.

Queries are built with SQLAlchemy Core (values always bound, identifiers checked
against a strict pattern and quoted by the dialect); rows stream through
server-side cursors, so any number of them exports in flat memory.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeGuard
from uuid import UUID

from sqlalchemy import (
    Column,
    ColumnElement,
    MetaData,
    Table,
    and_,
    bindparam,
    delete,
    event,
    func,
    inspect,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from connectors.base import Connector
from connectors.errors import ConnectorError, PermanentError, TransientError, Unidentified
from connectors.items import Dataset, Item, Record, Subject
from connectors.reports import DatasetErasure, ErasureReport, RestrictionReport, RetentionRule

_Strategy = Literal["delete", "anonymise", "retain"]
_Action = Literal["null", "hash", "fixed", "keep"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_IDENTIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_HASHED = re.compile(r"[0-9a-f]{64}")
_HASH_LENGTH = 64
_MIN_HASH_KEY = 32
_BATCH_ROWS = 1000
_WRITE = "handover_sql_write"

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
_TIMEOUT_ARGUMENT = {"postgresql": "timeout", "mysql": "connect_timeout", "sqlite": "timeout"}

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
    }
)

# SQLSTATEs (PostgreSQL, and MySQL's where it gives one) a retry may get past:
# connection exceptions, serialization failures, deadlocks, lock and statement
# timeouts, a server short of resources or shutting down.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53")
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})
# MySQL/MariaDB error numbers of the same kinds: too many connections, shutdown,
# lock wait timeout, deadlock, query interrupted or timed out, lost connections.
_TRANSIENT_MYSQL_ERRORS = frozenset(
    {1040, 1053, 1158, 1159, 1160, 1161, 1205, 1213, 1317, 1927, 2002, 2003, 2006, 2013}
    | {2055, 3024, 4031}
)
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


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
class _TableSpec:
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

    @property
    def chain(self) -> tuple[str, ...]:
        """The tables a row's reference leads through to the subject's column."""
        return tuple(hop.table for hop in self.through)

    @property
    def changed_columns(self) -> tuple[str, ...]:
        """The columns anonymisation writes (every rule but ``keep``)."""
        return tuple(name for name, rule in self.anonymise.items() if rule.action != "keep")


@dataclass(frozen=True, slots=True)
class _Source:
    """Where an identifier this connector ``provides`` is read: a column of a configured table."""

    table: str
    column: str


@dataclass(frozen=True, slots=True)
class _Bound:
    """A configured table bound to its reflected schema for one operation."""

    spec: _TableSpec
    table: Table
    path: tuple[Table, ...]
    columns: tuple[str, ...]
    order_by: tuple[str, ...]

    @property
    def subject_column(self) -> Column[Any]:
        """The column holding the subject's identifier, on the last table of the chain."""
        holder = self.path[-1] if self.path else self.table
        return holder.c[self.spec.subject_column]


class SqlConnector(Connector):
    """A relational database holding personal data, described table by table in configuration.

    Options (TOML keys of ``[connectors.NAME]``): ``url`` (``postgresql://``,
    ``mysql://``/``mariadb://`` or ``sqlite:///path``), ``tables`` (one table of
    options each; see the module docstring and ``docs/sql-connector.md``),
    ``hash_key`` (the key of the ``hash`` anonymisation, at least 32 characters),
    ``connect_timeout`` (seconds; for SQLite, how long to wait for a lock),
    ``pool_size`` and ``provides`` (identifier name → ``"table.column"`` holding it,
    for :meth:`resolve`). Everything is checked when the connector is built: a bad
    option raises :class:`PermanentError` naming the table and what is wrong.
    """

    categories: ClassVar[frozenset[str]] = frozenset()
    datasets: ClassVar[tuple[Dataset, ...]] = ()

    def __init__(
        self,
        name: str,
        *,
        url: object = None,
        tables: object = None,
        hash_key: object = None,
        connect_timeout: object = 10,
        pool_size: object = 5,
        provides: object = None,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self._url = self._parse_url(url)
        self._backend = self._url.get_backend_name()
        self._hash_key = self._parse_hash_key(hash_key)
        self._connect_timeout = self._positive_number("connect_timeout", connect_timeout)
        self._pool_size = int(self._positive_number("pool_size", pool_size, whole=True))
        self._tables = self._parse_tables(tables)
        self._sources = self._parse_provides(provides)
        self._engine_instance: AsyncEngine | None = None
        self.identifiers = frozenset(spec.identity for spec in self._tables)
        self.provides = frozenset(self._sources)
        self.categories = frozenset(spec.category for spec in self._tables)  # type: ignore[misc]
        self.datasets = tuple(  # type: ignore[misc]
            Dataset(spec.dataset, spec.category, spec.description, spec.columns)
            for spec in self._tables
        )

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Create the connection pool; connections are made on first use."""
        if self._engine_instance is not None:
            return
        engine = create_async_engine(
            self._url,
            pool_pre_ping=True,
            pool_size=self._pool_size,
            # Tables are reflected afresh for every request (so a migrated schema is
            # seen at once), which makes each statement new to SQLAlchemy's compiled
            # cache: it would only fill with entries never used again.
            query_cache_size=0,
            connect_args={_TIMEOUT_ARGUMENT[self._backend]: self._connect_timeout},
        )
        if self._backend == "sqlite":
            _take_sqlite_transactions_in_hand(engine)
        self._engine_instance = engine

    async def close(self) -> None:
        """Close every pooled connection."""
        engine, self._engine_instance = self._engine_instance, None
        if engine is not None:
            await engine.dispose()

    async def check(self) -> None:
        """Run a trivial query, then check every configured table and column exists."""
        with self._mapped_errors():
            async with self._engine().connect() as connection:
                await connection.execute(select(literal(1)))
                await self._bind(connection)

    # -- the requests ----------------------------------------------------------

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Stream the subject's rows table by table, blocked rows included.

        Rows of an ``anonymise`` table whose anonymised columns already hold their
        anonymised values are no longer about the subject and are left out. A
        subject without the identifier one of the tables needs raises
        :class:`Unidentified` before any row is yielded.
        """
        with self._mapped_errors():
            async with self._engine().connect() as connection:
                reached = [
                    (bound, self._reach(bound, subject)) for bound in await self._bind(connection)
                ]
                for bound, condition in reached:
                    if condition is None:
                        continue
                    async with aclosing(self._stream(connection, bound, condition)) as records:
                        async for record in records:
                            yield record

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        """Read each identifier in ``provides`` from its column of the subject's rows.

        Rows an erasure anonymised are no longer the subject's and are not read. One
        distinct non-null value is the answer; none leaves the identifier out; more
        than one raises :class:`PermanentError`: an ambiguous identifier is never
        guessed at.
        """
        found: dict[str, str] = {}
        with self._mapped_errors():
            async with self._engine().connect() as connection:
                bound_tables = {b.spec.table: b for b in await self._bind(connection)}
                for name, source in self._sources.items():
                    bound = bound_tables[source.table]
                    condition = self._reach(bound, subject)
                    if condition is None:
                        continue
                    values = await self._distinct_values(connection, bound, source, condition)
                    if len(values) > 1:
                        raise PermanentError(
                            f"connector {self.name!r}: the subject's rows of {source.table!r} "
                            f"hold more than one {name} in column {source.column!r}: ambiguous, "
                            "so none is taken"
                        )
                    if values:
                        found[name] = values.pop()
        return found

    async def erase(
        self,
        subject: Subject,
        *,
        dry_run: bool,
        retention: Mapping[str, RetentionRule],
    ) -> ErasureReport:
        """Delete, anonymise or block the subject's rows, in one transaction.

        Tables whose dataset is named in ``retention`` (or whose strategy is
        ``retain``) are blocked and reported retained. Tables are handled children
        first, so a chain still leads to the subject while its rows are erased.
        With ``dry_run`` the counts are taken and the transaction rolled back.
        """
        for spec in self._tables:
            if spec.dataset in retention and spec.block_column is None:
                raise PermanentError(
                    f"connector {self.name!r}: table {spec.table!r}: dataset {spec.dataset!r}"
                    " has a retention rule, and retention needs a block_column to block rows"
                )
        now = datetime.now(UTC)
        entries: dict[str, DatasetErasure] = {}
        with self._mapped_errors():
            async with self._engine().connect() as connection:
                await connection.execution_options(**{_WRITE: True})
                async with connection.begin() as transaction:
                    bound_tables = await self._bind(connection)
                    for bound in self._erase_order(bound_tables):
                        rule = retention.get(bound.spec.dataset, bound.spec.retention)
                        entries[bound.spec.dataset] = await self._erase_table(
                            connection, bound, subject, rule=rule, dry_run=dry_run, now=now
                        )
                    if dry_run:
                        await transaction.rollback()
        return ErasureReport(tuple(entries[spec.dataset] for spec in self._tables))

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Set ``block_column`` on the subject's rows of every table that has one."""
        blockable = [spec.table for spec in self._tables if spec.block_column is not None]
        unblockable = [spec.table for spec in self._tables if spec.block_column is None]
        if not blockable:
            return RestrictionReport(
                supported=False,
                note=f"connector {self.name!r}: no table has a block_column to mark rows with",
            )
        restricted: dict[str, int] = {}
        with self._mapped_errors():
            async with self._engine().connect() as connection:
                await connection.execution_options(**{_WRITE: True})
                async with connection.begin() as transaction:
                    for bound in await self._bind(connection):
                        if bound.spec.block_column is None:
                            continue
                        condition = self._reach(bound, subject)
                        restricted[bound.spec.dataset] = await self._block(
                            connection, bound, condition, dry_run=dry_run
                        )
                    if dry_run:
                        await transaction.rollback()
        note = None
        if unblockable:
            note = f"tables without a block_column were not restricted: {', '.join(unblockable)}"
        return RestrictionReport(supported=True, restricted=restricted, note=note)

    # -- one table -------------------------------------------------------------

    async def _distinct_values(
        self,
        connection: AsyncConnection,
        bound: _Bound,
        source: _Source,
        condition: ColumnElement[bool],
    ) -> set[str]:
        """The distinct non-null values of ``source``'s column in the subject's rows (at most 2).

        Rows of an ``anonymise`` table that are anonymised already are skipped, as the
        export skips them.
        """
        spec = bound.spec
        column = bound.table.c[source.column]
        watched = spec.changed_columns if spec.erase == "anonymise" else ()
        statement = (
            select(column, *(bound.table.c[name] for name in watched))
            .where(condition, column.is_not(None))
            .distinct()
            .execution_options(yield_per=_BATCH_ROWS)
        )
        values: set[str] = set()
        result = await connection.stream(statement)
        try:
            async for row in result:
                current = dict(zip(watched, row[1:], strict=True))
                if watched and self._anonymised_values(spec, current) == current:
                    continue
                values.add(str(row[0]))
                if len(values) > 1:
                    break
        finally:
            await result.close()
        return values

    async def _stream(
        self, connection: AsyncConnection, bound: _Bound, condition: ColumnElement[bool]
    ) -> AsyncGenerator[Record, None]:
        spec = bound.spec
        exported = len(bound.columns)
        watched = spec.changed_columns if spec.erase == "anonymise" else ()
        selected = list(bound.columns) + [c for c in watched if c not in bound.columns]
        statement = (
            select(*(bound.table.c[name] for name in selected))
            .where(condition)
            .order_by(*(bound.table.c[name] for name in bound.order_by))
            .execution_options(yield_per=_BATCH_ROWS)
        )
        result = await connection.stream(statement)
        try:
            async for batch in result.partitions():
                for row in batch:
                    values = dict(zip(selected, row, strict=True))
                    current = {name: values[name] for name in watched}
                    if watched and self._anonymised_values(spec, current) == current:
                        continue  # anonymised: no longer about the subject
                    data = {name: _jsonable(values[name]) for name in selected[:exported]}
                    yield Record(spec.dataset, data)
        finally:
            await result.close()

    async def _erase_table(
        self,
        connection: AsyncConnection,
        bound: _Bound,
        subject: Subject,
        *,
        rule: RetentionRule | None,
        dry_run: bool,
        now: datetime,
    ) -> DatasetErasure:
        dataset = bound.spec.dataset
        condition = self._reach(bound, subject)
        if rule is not None:
            retained = await self._block(connection, bound, condition, dry_run=dry_run)
            return DatasetErasure(
                dataset,
                retained=retained,
                legal_basis=rule.legal_basis,
                retained_until=now + rule.duration,
            )
        if condition is None:
            return DatasetErasure(dataset)
        if bound.spec.erase == "anonymise":
            anonymised = await self._anonymise(connection, bound, condition, dry_run=dry_run)
            return DatasetErasure(dataset, anonymised=anonymised)
        if dry_run:
            return DatasetErasure(dataset, deleted=await _count(connection, bound, condition))
        result = await connection.execute(delete(bound.table).where(condition))
        return DatasetErasure(dataset, deleted=result.rowcount)

    async def _block(
        self,
        connection: AsyncConnection,
        bound: _Bound,
        condition: ColumnElement[bool] | None,
        *,
        dry_run: bool,
    ) -> int:
        """Mark the matching rows restricted; how many rows are (or would be) blocked."""
        if condition is None:
            return 0
        assert bound.spec.block_column is not None  # checked before any table is touched
        blocked = await _count(connection, bound, condition)
        if blocked and not dry_run:
            flag = bound.table.c[bound.spec.block_column]
            value = True if _python_type(flag) is bool else 1
            await connection.execute(update(bound.table).where(condition).values({flag: value}))
        return blocked

    async def _anonymise(
        self,
        connection: AsyncConnection,
        bound: _Bound,
        condition: ColumnElement[bool],
        *,
        dry_run: bool,
    ) -> int:
        """Rewrite the anonymised columns of the matching rows, in primary-key batches.

        Rows already anonymised are left alone and not counted, so a repeat reports zero.
        """
        spec = bound.spec
        key = list(bound.table.primary_key.columns)
        changed = spec.changed_columns
        statement = (
            update(bound.table)
            .where(and_(*(column == bindparam(f"key_{i}") for i, column in enumerate(key))))
            .values({name: bindparam(f"new_{i}") for i, name in enumerate(changed)})
        )
        anonymised = 0
        last: Sequence[Any] | None = None
        while True:
            query = select(*key, *(bound.table.c[name] for name in changed)).where(condition)
            if last is not None:
                query = query.where(_after(key, last))
            rows = (await connection.execute(query.order_by(*key).limit(_BATCH_ROWS))).all()
            if not rows:
                return anonymised
            updates = []
            for row in rows:
                current = dict(zip(changed, row[len(key) :], strict=True))
                replaced = self._anonymised_values(spec, current)
                if replaced == current:
                    continue
                anonymised += 1
                parameters = {f"key_{i}": value for i, value in enumerate(row[: len(key)])}
                parameters.update({f"new_{i}": replaced[name] for i, name in enumerate(changed)})
                updates.append(parameters)
            if updates and not dry_run:
                await connection.execute(statement, updates)
            last = rows[-1][: len(key)]

    def _anonymised_values(self, spec: _TableSpec, current: Mapping[str, Any]) -> dict[str, Any]:
        """The anonymised values of ``current``; equal to it when it is anonymised already."""
        replaced: dict[str, Any] = {}
        for name, value in current.items():
            rule = spec.anonymise[name]
            if rule.action == "null":
                replaced[name] = None
            elif rule.action == "fixed":
                replaced[name] = rule.value
            else:
                replaced[name] = self._hash(value)
        return replaced

    def _hash(self, value: object) -> str | None:
        """Keyed SHA-256 (HMAC) hex of ``value``; a value already hashed stays as it is."""
        if value is None:
            return None
        if _looks_hashed(value):
            return value
        assert self._hash_key is not None  # checked when built
        data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else str(value)
        message = data if isinstance(data, bytes) else data.encode()
        return hmac.new(self._hash_key, message, hashlib.sha256).hexdigest()

    # -- schema ----------------------------------------------------------------

    async def _bind(self, connection: AsyncConnection) -> tuple[_Bound, ...]:
        """Reflect the configured tables and check them; raise naming everything missing."""
        names = list(dict.fromkeys(n for s in self._tables for n in (s.table, *s.chain)))
        metadata, missing_tables = await connection.run_sync(_reflect, names)
        missing = [f"table {name!r}" for name in missing_tables]
        for spec in self._tables:
            missing.extend(_missing_columns(spec, metadata))
        for source in self._sources.values():
            reflected = metadata.tables.get(source.table)
            if reflected is not None and source.column not in reflected.c:
                missing.append(f"column '{source.table}.{source.column}'")
        if missing:
            found = ", ".join(dict.fromkeys(missing))
            raise PermanentError(f"connector {self.name!r}: missing in the database: {found}")
        return tuple(self._bound(spec, metadata) for spec in self._tables)

    def _bound(self, spec: _TableSpec, metadata: MetaData) -> _Bound:
        table = metadata.tables[spec.table]
        key = tuple(str(column.name) for column in table.primary_key.columns)
        columns = spec.columns or tuple(str(column.name) for column in table.columns)
        problem = _schema_problem(spec, table, key)
        if problem:
            raise PermanentError(f"connector {self.name!r}: table {spec.table!r}: {problem}")
        return _Bound(
            spec=spec,
            table=table,
            path=tuple(metadata.tables[name] for name in spec.chain),
            columns=columns,
            order_by=spec.order_by or key,
        )

    def _reach(self, bound: _Bound, subject: Subject) -> ColumnElement[bool] | None:
        """The condition selecting the subject's rows; None when the subject cannot be there.

        A subject without the identifier the table is keyed by raises :class:`Unidentified`:
        matching nothing would claim the table holds nothing on them.
        """
        identifier = subject.identifier(bound.spec.identity)
        if not identifier:
            raise Unidentified(self.name, (bound.spec.identity,))
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

    def _erase_order(self, bound_tables: Sequence[_Bound]) -> list[_Bound]:
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
            order = _children_first(list(by_name), chain_edges + key_edges)
        except CycleError:
            order = _children_first(list(by_name), chain_edges)
        return [by_name[name] for name in order]

    # -- plumbing --------------------------------------------------------------

    def _engine(self) -> AsyncEngine:
        if self._engine_instance is None:
            raise PermanentError(f"connector {self.name!r} is not open: call open() first")
        return self._engine_instance

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """Turn driver and SQLAlchemy errors into transient or permanent connector errors."""
        try:
            yield
        except ConnectorError:
            raise
        except Exception as exc:
            if not _from_the_database(exc):
                raise
            where = self._url.render_as_string(hide_password=True)
            message = f"connector {self.name!r}: {where}: {_describe(exc)}"
            if _is_transient(exc):
                raise TransientError(message) from exc
            raise PermanentError(message) from exc

    # -- configuration ---------------------------------------------------------

    def _fail(self, message: str) -> PermanentError:
        return PermanentError(f"connector {self.name!r}: {message}")

    def _parse_url(self, raw: object) -> URL:
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

    def _parse_hash_key(self, raw: object) -> bytes | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or len(raw) < _MIN_HASH_KEY:
            raise self._fail(f"hash_key must be text of at least {_MIN_HASH_KEY} characters")
        return raw.encode()

    def _positive_number(self, option: str, raw: object, *, whole: bool = False) -> float:
        kinds = (int,) if whole else (int, float)
        if isinstance(raw, bool) or not isinstance(raw, kinds) or raw <= 0:
            kind = "a whole number" if whole else "a number of seconds"
            raise self._fail(f"{option} must be {kind} above zero, got {raw!r}")
        return float(raw)

    def _parse_tables(self, raw: object) -> tuple[_TableSpec, ...]:
        if not isinstance(raw, list | tuple) or not raw:
            raise self._fail("needs tables = [...], one table of options per database table")
        specs = []
        for index, table in enumerate(raw):
            label = table.get("table") if isinstance(table, Mapping) else None
            label = label if isinstance(label, str) else f"#{index + 1}"
            try:
                specs.append(_parse_table(table, hash_key=self._hash_key is not None))
            except ValueError as exc:
                raise self._fail(f"table {label!r}: {exc}") from None
        self._check_uniqueness(specs)
        try:
            _children_first(
                [spec.table for spec in specs],
                [(parent, spec.table) for spec in specs for parent in spec.chain],
            )
        except CycleError as exc:
            cycle = " → ".join(exc.args[1])
            raise self._fail(f"tables reach the subject through each other: {cycle}") from None
        return tuple(specs)

    def _parse_provides(self, raw: object) -> dict[str, _Source]:
        """``provides = { name = "table.column" }``: each table one of ours, keyed otherwise."""
        if raw is None:
            return {}
        example = '{ email = "users.email" }'
        if not isinstance(raw, Mapping) or not raw:
            raise self._fail(
                f"provides must name identifiers and the columns holding them, such as {example}"
            )
        by_table = {spec.table: spec for spec in self._tables}
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
            sources[name] = _Source(table, column)
        return sources

    def _check_uniqueness(self, specs: Sequence[_TableSpec]) -> None:
        tables: set[str] = set()
        datasets: set[str] = set()
        for spec in specs:
            if spec.table in tables:
                raise self._fail(f"table {spec.table!r}: configured twice")
            if spec.dataset in datasets:
                raise self._fail(f"table {spec.table!r}: dataset {spec.dataset!r} is already used")
            tables.add(spec.table)
            datasets.add(spec.dataset)


# -- configuration parsing --------------------------------------------------------


def _parse_table(raw: object, *, hash_key: bool) -> _TableSpec:
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
    spec = _TableSpec(
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
    )
    if erase == "retain" and spec.block_column is None:
        raise ValueError('erase = "retain" needs a block_column to mark the kept rows restricted')
    return spec


def _identifier(value: object, what: str) -> str:
    if value is None:
        raise ValueError(f'needs {what} = "..."')
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} must be a name of letters, digits and _, got {value!r}")
    return value


def _optional_identifier(value: object, what: str) -> str | None:
    return None if value is None else _identifier(value, what)


def _identifiers(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list of column names, got {value!r}")
    names = tuple(_identifier(item, what) for item in value)
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names a column twice")
    return names


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


# -- schema helpers -----------------------------------------------------------------


def _reflect(connection: Connection, names: Sequence[str]) -> tuple[MetaData, list[str]]:
    inspector = inspect(connection)
    missing = [name for name in names if not inspector.has_table(name)]
    metadata = MetaData()
    present = [name for name in names if name not in missing]
    if present:
        metadata.reflect(connection, only=present, views=True, resolve_fks=False)
    return metadata, missing


def _missing_columns(spec: _TableSpec, metadata: MetaData) -> Iterator[str]:
    """``column 'table.name'`` for every configured column the database lacks."""
    wanted: list[tuple[str, str]] = [
        (spec.table, name)
        for name in (*spec.columns, *spec.order_by, *spec.anonymise, spec.block_column)
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


def _schema_problem(spec: _TableSpec, table: Table, key: tuple[str, ...]) -> str | None:
    """What makes a present table unusable for its strategy, if anything."""
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
    return _python_type(column) is str and (length is None or length >= _HASH_LENGTH)


def _python_type(column: Column[Any]) -> type | None:
    try:
        python_type: type = column.type.python_type
    except NotImplementedError:
        return None
    return python_type


def _referenced_tables(table: Table) -> Iterator[str]:
    for foreign_key in table.foreign_keys:
        yield foreign_key.target_fullname.split(".")[-2]


def _children_first(tables: Sequence[str], edges: Sequence[tuple[str, str]]) -> list[str]:
    """``tables`` ordered so that for each (parent, child) edge the child comes first."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for table in tables:
        sorter.add(table)
    for parent, child in edges:
        sorter.add(parent, child)
    return list(sorter.static_order())


def _column_value(value: str, column: Column[Any]) -> Any:
    """The subject's identifier as the column holds it, or None when it cannot match."""
    if _python_type(column) is not int:
        return value
    try:
        return int(value)
    except ValueError:
        return None


def _after(key: Sequence[Column[Any]], last: Sequence[Any]) -> ColumnElement[bool]:
    """Rows whose primary key sorts after ``last`` (keyset pagination)."""
    if len(key) == 1:
        single: ColumnElement[bool] = key[0] > last[0]
        return single
    composite: ColumnElement[bool] = tuple_(*key) > tuple_(*last)
    return composite


async def _count(connection: AsyncConnection, bound: _Bound, condition: ColumnElement[bool]) -> int:
    statement = select(func.count()).select_from(bound.table).where(condition)
    return int((await connection.execute(statement)).scalar_one())


def _looks_hashed(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a digest as ``hash`` writes it (64 lowercase hex digits)."""
    return isinstance(value, str) and _HASHED.fullmatch(value) is not None


def _take_sqlite_transactions_in_hand(engine: AsyncEngine) -> None:
    """Make SQLite transactions explicit: a snapshot for reads, the write lock up front for writes.

    Python's sqlite3 would begin a transaction only before the first write, so
    reads before it would not share its snapshot; a write transaction that begins
    ``IMMEDIATE`` waits for the lock (up to the timeout) instead of failing midway.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        writing = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


# -- values and errors ------------------------------------------------------------

_JSON_NATIVE = (str, int, float, bool, datetime, date, time, UUID, Decimal, bytes, list, dict)


def _jsonable(value: Any) -> Any:
    """A value orjson (with the archive's Decimal/bytes fallback) can write; else its text."""
    if value is None or isinstance(value, _JSON_NATIVE):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the DB-API error SQLAlchemy wraps, and their causes."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        pending += [orig if isinstance(orig, BaseException) else None, current.__cause__]
        pending.append(current.__context__)


_DRIVER_PACKAGES = frozenset({"asyncpg", "aiomysql", "pymysql", "aiosqlite", "sqlite3"})


def _from_the_database(exc: Exception) -> bool:
    """Whether ``exc`` comes from SQLAlchemy, a driver or the network, not from our own code."""
    package = type(exc).__module__.partition(".")[0]
    return isinstance(exc, SQLAlchemyError | OSError) or package in _DRIVER_PACKAGES


def _is_transient(exc: BaseException) -> bool:
    for error in _causes(exc):
        if isinstance(error, OSError | PoolTimeoutError):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
        ):
            return True
        sqlite_code = getattr(error, "sqlite_errorcode", None)
        if isinstance(sqlite_code, int) and sqlite_code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return True
        from_mysql = type(error).__module__.startswith("pymysql") and bool(error.args)
        if from_mysql and error.args[0] in _TRANSIENT_MYSQL_ERRORS:
            return True
    return False


def _describe(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's echo of the statement and its values."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = exc.orig.__cause__ or exc.orig
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}".split("\n[SQL:")[0]
