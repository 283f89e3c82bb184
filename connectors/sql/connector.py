"""The ``sql`` connector itself: its requests, answered with SQLAlchemy Core queries.

:class:`SqlConnector` parses its options when built (:mod:`connectors.sql.config`),
creates one connection pool on :meth:`~SqlConnector.open` and, for each request,
binds its tables to the reflected schema (:mod:`connectors.sql.schema`) and maps
every database error on the way out (:mod:`connectors.sql.errors`). Export and
identity lookups stream rows through server-side cursors in batches, and an export
yields each cursor fetch as one batch (:class:`~connectors.items.Records`); erasure and
restriction run in one transaction (rolled back for a dry run); anonymisation
goes in primary-key batches and skips rows already anonymised, so a repeat reports
nothing new. A rectification (GDPR Art. 16) sets the columns a table declares
``rectifiable`` on the subject's rows, by primary key. An objection (GDPR Art. 21)
sets the subject's consents for the purposes objected to to not granted, in the consent
table ``objection`` names, and reads them back.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
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
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import sqltypes

from connectors.base import Connector
from connectors.errors import PermanentError
from connectors.items import Batch, Dataset, Period, Records, Subject
from connectors.reports import (
    DatasetErasure,
    ErasureReport,
    FieldChange,
    FieldRectification,
    ObjectionReport,
    PurposeObjection,
    Rectifiable,
    RectificationReport,
    RestrictionReport,
    RetentionRule,
)
from connectors.sql.config import ObjectionSpec, Source, SqlOptions, TableSpec
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
    ``pool_size``, ``provides`` (identifier name → ``"table.column"`` holding it,
    for :meth:`resolve`) and ``objection`` (the consent table objections set to not
    granted, with Handover's purposes mapped to its purpose values). Everything is
    checked when the connector is built: a bad option raises :class:`PermanentError`
    naming the table and what is wrong.
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
        objection: object = None,
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
        self._objection = config.parse_objection(objection, self._tables)
        if self._objection is not None:
            self.objection_purposes = frozenset(self._objection.purposes)
        # A column holding an identifier (``provides``) identifies the subject; subject
        # columns are never rectifiable (config.parse_tables refuses them).
        identifying = {(source.table, source.column) for source in self._sources.values()}
        self.rectifiable = tuple(
            Rectifiable(
                spec.dataset,
                column,
                kind,
                identity=kind == "email" or (spec.table, column) in identifying,
            )
            for spec in self._tables
            for column, kind in spec.rectifiable.items()
        )
        self._engine_instance: AsyncEngine | None = None
        self.identifiers = frozenset(spec.identity for spec in self._tables)
        self.provides = frozenset(self._sources)
        self.categories = frozenset(spec.category for spec in self._tables)  # type: ignore[misc]
        self.datasets = tuple(  # type: ignore[misc]
            Dataset(
                spec.dataset,
                spec.category,
                spec.description,
                spec.columns,
                column_descriptions=spec.column_descriptions,
                series=spec.series,
                by_period=spec.time_column is not None,
            )
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
        anonymised values are no longer about the subject and are left out. With an
        export's time range (``subject.period``), a table with a ``time_column`` gives
        only the rows dated in it (:func:`in_period`); the others give every row. A
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
                    if subject.period is not None and bound.spec.time_column is not None:
                        column = bound.table.c[bound.spec.time_column]
                        await _check_time_text(connection, column, condition, self.name)
                        condition = and_(condition, *in_period(column, subject.period))
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
        if not dry_run:
            await self.after_commit()
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

    async def object(self, subject: Subject, purposes: Sequence[str]) -> ObjectionReport:
        """Set the subject's consents for ``purposes`` to not granted, in one transaction.

        Each purpose mapped in ``objection.purposes`` reports how many of its consent
        rows were granted and are not any more; one not mapped is reported unsupported.
        """
        spec = self._objection
        entries: list[PurposeObjection] = []
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                await connection.execution_options(**{_WRITE: True})
                async with connection.begin():
                    bound = self._objection_table(await self._bind(connection))
                    for purpose in purposes:
                        if spec is None or bound is None or purpose not in spec.purposes:
                            entries.append(self._unmapped(purpose))
                            continue
                        targets = spec.purposes[purpose]
                        stopped = await self._withdraw(connection, bound, spec, subject, targets)
                        entries.append(PurposeObjection(purpose, targets, stopped=stopped))
        return ObjectionReport(tuple(entries))

    async def objections_in_force(
        self, subject: Subject, purposes: Sequence[str]
    ) -> Mapping[str, bool]:
        """For each mapped purpose: whether none of the subject's consents for it is granted."""
        spec = self._objection
        if spec is None:
            return {}
        mapped = [purpose for purpose in purposes if purpose in spec.purposes]
        in_force: dict[str, bool] = {}
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                bound = self._objection_table(await self._bind(connection))
                assert bound is not None  # the spec names one of the tables
                condition = reach(bound, subject, connector=self.name)
                for purpose in mapped:
                    if condition is None:
                        in_force[purpose] = True
                        continue
                    granted = self._granted(bound, spec, condition, spec.purposes[purpose])
                    count = await _count(connection, bound, granted)
                    in_force[purpose] = count == 0
        return in_force

    def _objection_table(self, bound_tables: Iterable[Bound]) -> Bound | None:
        """The consent table, its objection columns checked against the database."""
        spec = self._objection
        if spec is None:
            return None
        bound = next(b for b in bound_tables if b.spec.table == spec.table)
        columns = [spec.purpose_column, spec.granted_column, spec.updated_column]
        missing = [name for name in columns if name is not None and name not in bound.table.c]
        if missing:
            raise PermanentError(
                f"connector {self.name!r}: objection table {spec.table!r} has no column(s) "
                f"{', '.join(missing)}"
            )
        return bound

    def _unmapped(self, purpose: str) -> PurposeObjection:
        note = f"connector {self.name!r} maps no consent purpose to {purpose!r}"
        return PurposeObjection(purpose, supported=False, note=note)

    @staticmethod
    def _granted(
        bound: Bound, spec: ObjectionSpec, condition: ColumnElement[bool], targets: Sequence[str]
    ) -> ColumnElement[bool]:
        """The subject's consent rows for ``targets`` that are granted."""
        granted = bound.table.c[spec.granted_column]
        return and_(
            condition,
            bound.table.c[spec.purpose_column].in_(list(targets)),
            granted.is_not(None),
            granted != _false(granted),
        )

    async def _withdraw(
        self,
        connection: AsyncConnection,
        bound: Bound,
        spec: ObjectionSpec,
        subject: Subject,
        targets: Sequence[str],
    ) -> int:
        """Set the subject's consents for ``targets`` to not granted; how many changed.

        A granted row becomes not granted; a target the subject has no row for is
        recorded not granted (a new row, when the table holds the subject's column
        itself and the subject has rows in it already), so the objection stays on
        record where the platform reads consents. Rows already not granted stay as
        they are: a repeat changes nothing.
        """
        condition = reach(bound, subject, connector=self.name)
        if condition is None:
            return 0
        granted = self._granted(bound, spec, condition, targets)
        values: dict[str, Any] = {spec.granted_column: _false(bound.table.c[spec.granted_column])}
        if spec.updated_column is not None:
            column = bound.table.c[spec.updated_column]
            now = datetime.now(UTC)
            values[spec.updated_column] = (
                now if python_type(column) is datetime else now.isoformat()
            )
        result = await connection.execute(update(bound.table).where(granted).values(values))
        changed = int(result.rowcount)
        if bound.spec.through:
            return changed
        purpose = bound.table.c[spec.purpose_column]
        known = await connection.execute(select(bound.subject_column, purpose).where(condition))
        rows = known.all()
        if not rows:
            return changed  # the subject is not in this table: nothing to record against
        held = {row[1] for row in rows}
        missing = [target for target in targets if target not in held]
        if missing:
            stored_subject = rows[0][0]
            await connection.execute(
                bound.table.insert(),
                [
                    {
                        bound.subject_column.name: stored_subject,
                        spec.purpose_column: target,
                        **values,
                    }
                    for target in missing
                ],
            )
        return changed + len(missing)

    async def lift_restriction(self, subject: Subject) -> RestrictionReport:
        """Clear ``block_column`` on the subject's rows of every table that has one."""
        if not any(spec.block_column for spec in self._tables):
            return RestrictionReport(
                supported=False,
                note=f"connector {self.name!r}: no table has a block_column to mark rows with",
            )
        lifted: dict[str, int] = {}
        with mapped_errors(self._url, connector=self.name):
            async with self._engine().connect() as connection:
                await connection.execution_options(**{_WRITE: True})
                async with connection.begin():
                    for bound in await self._bind(connection):
                        if bound.spec.block_column is None:
                            continue
                        condition = reach(bound, subject, connector=self.name)
                        if condition is None:
                            lifted[bound.spec.dataset] = 0
                            continue
                        flag = bound.table.c[bound.spec.block_column]
                        blocked = and_(condition, flag != _false(flag))
                        result = await connection.execute(
                            update(bound.table).where(blocked).values({flag: _false(flag)})
                        )
                        lifted[bound.spec.dataset] = int(result.rowcount)
        return RestrictionReport(supported=True, restricted=lifted)

    async def rectify(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> RectificationReport:
        """Set each changed column on the subject's rows of its table, in one transaction.

        Rows holding the value already are not counted; rows an erasure anonymised are no
        longer the subject's and are left alone.
        """
        entries = []
        with mapped_errors(self._url, connector=self.name, new_values=True):
            async with self._engine().connect() as connection:
                await connection.execution_options(**{_WRITE: True})
                async with connection.begin():
                    bound_tables = {b.spec.dataset: b for b in await self._bind(connection)}
                    for change in changes:
                        bound = self._rectifiable_table(bound_tables, change)
                        entries.append(await self._rectify_rows(connection, bound, subject, change))
        return RectificationReport(tuple(entries))

    async def rectifications_in_force(
        self, subject: Subject, changes: Sequence[FieldChange]
    ) -> Sequence[bool]:
        """For each change: whether every one of the subject's rows holds the new value."""
        in_force = []
        with mapped_errors(self._url, connector=self.name, new_values=True):
            async with self._engine().connect() as connection:
                bound_tables = {b.spec.dataset: b for b in await self._bind(connection)}
                for change in changes:
                    bound = self._rectifiable_table(bound_tables, change)
                    rows = await self._subject_rows(connection, bound, subject, change.field)
                    in_force.append(all(_same(value, change.value) for _, value in rows))
        return in_force

    def _rectifiable_table(self, bound_tables: Mapping[str, Bound], change: FieldChange) -> Bound:
        bound = bound_tables.get(change.dataset)
        if bound is None or change.field not in bound.spec.rectifiable:
            raise PermanentError(
                f"connector {self.name!r}: {change.dataset}.{change.field} is not rectifiable"
            )
        if change.field not in bound.table.c:
            raise PermanentError(
                f"connector {self.name!r}: table {bound.spec.table!r} has no column "
                f"{change.field!r}"
            )
        return bound

    async def _subject_rows(
        self, connection: AsyncConnection, bound: Bound, subject: Subject, column: str
    ) -> list[tuple[tuple[Any, ...], Any]]:
        """The primary key and ``column`` of each of the subject's rows that is still theirs
        (not anonymised)."""
        condition = reach(bound, subject, connector=self.name)
        if condition is None:
            return []
        spec = bound.spec
        key = list(bound.table.primary_key.columns)
        watched = spec.changed_columns if spec.erase == "anonymise" else ()
        query = select(*key, bound.table.c[column], *(bound.table.c[n] for n in watched)).where(
            condition
        )
        rows = []
        for row in (await connection.execute(query)).all():
            current = dict(zip(watched, row[len(key) + 1 :], strict=True))
            if watched and self._anonymised_values(spec, current) == current:
                continue
            rows.append((tuple(row[: len(key)]), row[len(key)]))
        return rows

    async def _rectify_rows(
        self, connection: AsyncConnection, bound: Bound, subject: Subject, change: FieldChange
    ) -> FieldRectification:
        """Set the column on the subject's one row of the table.

        No row: nothing changed, ``held`` false. More than one: refused (a
        :class:`PermanentError` naming the table; the transaction rolls back), as which of
        them the subject meant is not known.
        """
        key = list(bound.table.primary_key.columns)
        if not key:
            raise PermanentError(
                f"connector {self.name!r}: table {bound.spec.table!r} has no primary key to "
                "rectify its rows by"
            )
        rows = await self._subject_rows(connection, bound, subject, change.field)
        if not rows:
            return FieldRectification(
                change.dataset,
                change.field,
                0,
                note=f"no row of the subject in {bound.spec.table}: nothing changed",
                held=False,
            )
        if len(rows) > 1:
            raise PermanentError(
                f"connector {self.name!r}: table {bound.spec.table!r} holds {len(rows)} rows "
                f"of the subject: {change.dataset}.{change.field} is changed only where the "
                "subject has one row"
            )
        stale = [pk for pk, value in rows if not _same(value, change.value)]
        if stale:
            statement = (
                update(bound.table)
                .where(and_(*(column == bindparam(f"key_{i}") for i, column in enumerate(key))))
                .values({change.field: bindparam("new_value")})
            )
            await connection.execute(
                statement,
                [
                    {"new_value": change.value, **{f"key_{i}": v for i, v in enumerate(pk)}}
                    for pk in stale
                ],
            )
        return FieldRectification(change.dataset, change.field, len(stale))

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

    def _hash(self, value: Any) -> str | None:
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


def in_period(column: Column[Any], period: Period) -> list[ColumnElement[bool]]:
    """Conditions keeping the rows whose ``column`` falls in ``period``.

    The bounds are given in the column's own terms: a timestamp with a time zone gets
    them as they are, one without gets them in UTC (naive), an integer column Unix
    seconds, and a text column ISO 8601 text in UTC (``2026-11-01T00:00:00``, compared
    as text: the column must hold that form, which :func:`_check_time_text` checks). A
    row whose time is NULL is outside every range.
    """

    def bound(moment: datetime) -> Any:
        kind = column.type
        if isinstance(kind, sqltypes.DateTime):
            return moment if kind.timezone else moment.astimezone(UTC).replace(tzinfo=None)
        if isinstance(kind, sqltypes.Date):
            return moment.astimezone(UTC).date()
        if isinstance(kind, sqltypes.Integer | sqltypes.Numeric):
            return int(moment.timestamp())
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")

    conditions: list[ColumnElement[bool]] = [column.is_not(None)]
    if period.since is not None:
        conditions.append(column >= bound(period.since))
    if period.until is not None:
        conditions.append(column < bound(period.until))
    return conditions


def _is_text_time(column: Column[Any]) -> bool:
    """Whether :func:`in_period` compares ``column`` as text."""
    kind = column.type
    return not isinstance(
        kind, sqltypes.DateTime | sqltypes.Date | sqltypes.Integer | sqltypes.Numeric
    )


async def _check_time_text(
    connection: AsyncConnection,
    column: Column[Any],
    condition: ColumnElement[bool],
    connector: str,
) -> None:
    """A text time column compared with a range must hold ISO 8601 in UTC with a ``T``
    (``2026-11-01T00:00:00``, optionally fractional seconds, then ``Z``, ``+00:00`` or
    nothing): any other form
    sorts wrongly against the bounds (SQLite's ``CURRENT_TIMESTAMP`` writes a space, which
    sorts before ``T``: rows of the first day left out, of the last let in). The
    subject's rows are checked first; one in another form raises :class:`PermanentError`
    naming the column, so no range is claimed that was not applied."""
    if not _is_text_time(column):
        return
    shape = "____-__-__T__:__:__"
    utc = or_(column.like("%Z"), column.like("%+00:00"), column.not_like("%:%:%:%"))
    in_form = or_(
        column.like(shape),
        column.like(shape + "Z"),
        column.like(shape + "+00:00"),
        and_(column.like(shape + ".%"), column.not_like("%+%") | column.like("%+00:00"), utc),
    )
    odd = await connection.execute(
        select(literal(1)).where(condition, column.is_not(None), not_(in_form)).limit(1)
    )
    if odd.first() is not None:
        raise PermanentError(
            f"connector {connector!r}: {column.table.name}.{column.name} holds times not in "
            "the form 2026-11-01T00:00:00 (ISO 8601 in UTC, with a T): an export's time "
            "range cannot be applied to it; store it so, or as a timestamp"
        )


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


def _same(stored: Any, value: Any) -> bool:
    """Whether a stored value is the new one, across the drivers' types (1 and True, 2 and 2.0)."""
    if isinstance(value, bool):
        return stored is not None and bool(stored) is value
    if isinstance(value, int | float) and isinstance(stored, int | float | Decimal):
        return float(stored) == float(value)
    return bool(stored == value)


def _false(column: Column[Any]) -> Any:
    """Not granted, as the column stores it: ``False`` in a boolean column, else 0."""
    return False if python_type(column) is bool else 0


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
