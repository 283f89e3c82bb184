"""The ``sql`` connector itself: its requests, answered with SQLAlchemy Core queries.

:class:`SqlConnector` parses its options when built (:mod:`connectors.sql.config`),
creates one connection pool on :meth:`~SqlConnector.open` and, for each request,
binds its tables to the reflected schema (:mod:`connectors.sql.schema`) and maps
every database error on the way out (:mod:`connectors.sql.errors`). Export and
identity lookups stream rows through server-side cursors in batches, and an export
yields each cursor fetch as one batch (:class:`~connectors.items.Records`); erasure and
restriction run in one transaction (rolled back for a dry run); anonymisation
goes in primary-key batches and skips rows already anonymised, so a repeat reports
nothing new.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, ClassVar, TypeGuard
from uuid import UUID

from sqlalchemy import (
    Column,
    ColumnElement,
    and_,
    bindparam,
    delete,
    event,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from connectors.base import Connector
from connectors.errors import PermanentError
from connectors.items import Batch, Dataset, Records, Subject
from connectors.reports import DatasetErasure, ErasureReport, RestrictionReport, RetentionRule
from connectors.sql.config import Source, SqlOptions, TableSpec
from connectors.sql.errors import mapped_errors
from connectors.sql.schema import Bound, bind, erase_order, python_type, reach

_HASHED = re.compile(r"[0-9a-f]{64}")
_BATCH_ROWS = 1000
_WRITE = "handover_sql_write"
_TIMEOUT_ARGUMENT = {"postgresql": "timeout", "mysql": "connect_timeout", "sqlite": "timeout"}


class SqlConnector(Connector):
    """A relational database holding personal data, described table by table in configuration.

    Options (TOML keys of ``[connectors.NAME]``): ``url`` (``postgresql://``,
    ``mysql://``/``mariadb://`` or ``sqlite:///path``), ``tables`` (one table of
    options each; see :mod:`connectors.sql` and ``docs/sql-connector.md``),
    ``hash_key`` (the key of the ``hash`` anonymisation, at least 32 characters),
    ``connect_timeout`` (seconds; for SQLite, how long to wait for a lock),
    ``pool_size`` and ``provides`` (identifier name → ``"table.column"`` holding it,
    for :meth:`resolve`). Everything is checked when the connector is built: a bad
    option raises :class:`PermanentError` naming the table and what is wrong.
    """

    categories: ClassVar[frozenset[str]] = frozenset()
    datasets: ClassVar[tuple[Dataset, ...]] = ()
    journals_commits: ClassVar[bool] = True
    needed_at_start: ClassVar[bool] = True  # the platform's own database

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
        config = SqlOptions(name)
        self._url = config.parse_url(url)
        self._backend = self._url.get_backend_name()
        self._hash_key = config.parse_hash_key(hash_key)
        self._connect_timeout = config.positive_number("connect_timeout", connect_timeout)
        self._pool_size = int(config.positive_number("pool_size", pool_size, whole=True))
        self._tables = config.parse_tables(tables, hash_key=self._hash_key is not None)
        self._sources = config.parse_provides(provides, self._tables)
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
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                await connection.execute(select(literal(1)))
                await self._bind(connection)

    # -- the requests ----------------------------------------------------------

    async def export_batches(self, subject: Subject) -> AsyncIterator[Batch]:
        """Stream the subject's rows table by table, blocked rows included, a fetch at a time.

        Each batch is one fetch of the table's server-side cursor (up to 1,000 rows).
        Rows of an ``anonymise`` table whose anonymised columns already hold their
        anonymised values are no longer about the subject and are left out. A
        subject without the identifier one of the tables needs raises
        :class:`Unidentified` before any row is yielded.
        """
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                reached = [
                    (bound, reach(bound, subject, connector=self.name))
                    for bound in await self._bind(connection)
                ]
                for bound, condition in reached:
                    if condition is None:
                        continue
                    async with aclosing(self._stream(connection, bound, condition)) as batches:
                        async for batch in batches:
                            yield batch

    async def resolve(self, subject: Subject) -> Mapping[str, str]:
        """Read each identifier in ``provides`` from its column of the subject's rows.

        Rows an erasure anonymised are no longer the subject's and are not read. One
        distinct non-null value is the answer; none leaves the identifier out; more
        than one raises :class:`PermanentError`: an ambiguous identifier is never
        guessed at.
        """
        found: dict[str, str] = {}
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                bound_tables = {b.spec.table: b for b in await self._bind(connection)}
                for name, source in self._sources.items():
                    bound = bound_tables[source.table]
                    condition = reach(bound, subject, connector=self.name)
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
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                await connection.execution_options(**{_WRITE: True})
                async with connection.begin() as transaction:
                    bound_tables = await self._bind(connection)
                    for bound in erase_order(bound_tables):
                        rule = retention.get(bound.spec.dataset, bound.spec.retention)
                        entries[bound.spec.dataset] = await self._erase_table(
                            connection, bound, subject, rule=rule, dry_run=dry_run, now=now
                        )
                    report = ErasureReport(tuple(entries[spec.dataset] for spec in self._tables))
                    if dry_run:
                        await transaction.rollback()
                    else:
                        await self.before_commit(report)  # raising rolls everything back
        return report

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
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                await connection.execution_options(**{_WRITE: True})
                async with connection.begin() as transaction:
                    for bound in await self._bind(connection):
                        if bound.spec.block_column is None:
                            continue
                        condition = reach(bound, subject, connector=self.name)
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
        bound: Bound,
        source: Source,
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
        self, connection: AsyncConnection, bound: Bound, condition: ColumnElement[bool]
    ) -> AsyncGenerator[Records, None]:
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
        names = selected[:exported]
        result = await connection.stream(statement)
        try:
            async for fetched in result.partitions():
                if not watched:  # every column selected is exported
                    rows = [dict(zip(names, map(_jsonable, row), strict=True)) for row in fetched]
                else:
                    rows = []
                    for row in fetched:
                        values = dict(zip(selected, row, strict=True))
                        current = {name: values[name] for name in watched}
                        if self._anonymised_values(spec, current) == current:
                            continue  # anonymised: no longer about the subject
                        rows.append({name: _jsonable(values[name]) for name in names})
                if rows:
                    yield Records(spec.dataset, rows)
        finally:
            await result.close()

    async def _erase_table(
        self,
        connection: AsyncConnection,
        bound: Bound,
        subject: Subject,
        *,
        rule: RetentionRule | None,
        dry_run: bool,
        now: datetime,
    ) -> DatasetErasure:
        dataset = bound.spec.dataset
        condition = reach(bound, subject, connector=self.name)
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
        bound: Bound,
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
            value = True if python_type(flag) is bool else 1
            await connection.execute(update(bound.table).where(condition).values({flag: value}))
        return blocked

    async def _anonymise(
        self,
        connection: AsyncConnection,
        bound: Bound,
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

    def _anonymised_values(self, spec: TableSpec, current: Mapping[str, Any]) -> dict[str, Any]:
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

    # -- plumbing --------------------------------------------------------------

    async def _bind(self, connection: AsyncConnection) -> tuple[Bound, ...]:
        """The configured tables, reflected and checked: :func:`.schema.bind`."""
        return await bind(connection, self._tables, self._sources, connector=self.name)

    def _engine(self) -> AsyncEngine:
        if self._engine_instance is None:
            raise PermanentError(f"connector {self.name!r} is not open: call open() first")
        return self._engine_instance


def _after(key: Sequence[Column[Any]], last: Sequence[Any]) -> ColumnElement[bool]:
    """Rows whose primary key sorts after ``last`` (keyset pagination)."""
    if len(key) == 1:
        single: ColumnElement[bool] = key[0] > last[0]
        return single
    composite: ColumnElement[bool] = tuple_(*key) > tuple_(*last)
    return composite


async def _count(connection: AsyncConnection, bound: Bound, condition: ColumnElement[bool]) -> int:
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


# -- values --------------------------------------------------------------------

_JSON_NATIVE = (str, int, float, bool, datetime, date, time, UUID, Decimal, bytes, list, dict)


def _jsonable(value: Any) -> Any:
    """A value orjson (with the archive's Decimal/bytes fallback) can write; else its text."""
    if value is None or isinstance(value, _JSON_NATIVE):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value)
