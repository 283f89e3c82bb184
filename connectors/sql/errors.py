"""The ``sql`` connector's failures, mapped once to transient or permanent connector errors.

:func:`mapped_errors` wraps every request: an error raised by SQLAlchemy, a
database driver (asyncpg, aiomysql/PyMySQL, aiosqlite/sqlite3) or the network
becomes a :class:`~connectors.errors.TransientError` when a retry may get past it
(a lost or refused connection, a pool timeout, a serialization failure or
deadlock, a lock or statement timeout, a server short of resources or shutting
down, SQLite busy or locked) and a :class:`~connectors.errors.PermanentError`
otherwise. An error from our own code passes through unchanged.

The message is Handover's own words: the connector, the database URL with its
password hidden, the driver's error class and its code — the SQLSTATE and, from
PostgreSQL, the table, column and constraint it names; MySQL's error number;
SQLite's result code name — never the statement or its values. The driver's own
message goes to the error's ``detail`` (admins only): it can quote the subject's data
(PostgreSQL's ``Key (email)=(alice@example.com) already exists``, MySQL's
``Duplicate entry 'alice@example.com'``). Where a request writes new values (a
rectification's), an integrity or data error's detail is a fixed text instead: the
driver's would quote the new value, which must not outlive the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import URL
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from connectors.errors import ConnectorError, PermanentError, TransientError

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
# SQLSTATE classes of errors about the values written: data exceptions, integrity
# constraint violations.
_VALUE_SQLSTATE_CLASSES = ("22", "23")
#: The detail of an integrity or data error where the request wrote new values.
NEW_VALUE_REFUSED = (
    "the database refused a new value (a constraint or the column's type); the driver's "
    "message is not kept, as it may quote the value"
)


@contextmanager
def mapped_errors(url: URL, *, connector: str, new_values: bool = False) -> Iterator[None]:
    """Turn driver and SQLAlchemy errors into transient or permanent connector errors.

    ``new_values``: the request writes values that must not outlive it (a rectification's);
    an integrity or data error's detail is then :data:`NEW_VALUE_REFUSED`.
    """
    try:
        yield
    except ConnectorError:
        raise
    except Exception as exc:
        if not _from_the_database(exc):
            raise
        where = url.render_as_string(hide_password=True)
        message = f"connector {connector!r}: {where}: {_describe(exc)}"
        detail = NEW_VALUE_REFUSED if new_values and _about_values(exc) else _driver_message(exc)
        if url.password and len(str(url.password)) >= 4:
            detail = detail.replace(str(url.password), "***")
        if _is_transient(exc):
            raise TransientError(message, detail=detail) from exc
        raise PermanentError(message, detail=detail) from exc


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


def _about_values(exc: BaseException) -> bool:
    """Whether ``exc`` is an integrity or data error: its driver's message may quote values."""
    for error in _causes(exc):
        if isinstance(error, IntegrityError | DataError):
            return True
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _VALUE_SQLSTATE_CLASSES:
            return True
    return False


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


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception inside SQLAlchemy's wrapping, or ``exc`` itself."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return exc.orig.__cause__ or exc.orig
    return exc


# The diagnostic fields of a PostgreSQL error (asyncpg's names) that name the schema,
# never a value: safe in a message.
_POSTGRES_NAMES = (
    ("table", "table_name"),
    ("column", "column_name"),
    ("constraint", "constraint_name"),
)


def _describe(exc: BaseException) -> str:
    """The driver's error class and codes: what a message may say about a failure."""
    error = _driver_error(exc)
    codes: list[str] = []
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        codes.append(f"SQLSTATE {sqlstate}")
    from_mysql = type(error).__module__.startswith("pymysql") and bool(error.args)
    if from_mysql and isinstance(error.args[0], int):
        codes.append(f"MySQL error {error.args[0]}")
    sqlite_name = getattr(error, "sqlite_errorname", None)
    if isinstance(sqlite_name, str) and sqlite_name:
        codes.append(sqlite_name)
    if isinstance(error, OSError) and error.errno is not None:
        codes.append(f"errno {error.errno}")
    codes += [
        f"{label} {value}"
        for label, attribute in _POSTGRES_NAMES
        if isinstance(value := getattr(error, attribute, None), str) and value
    ]
    return type(error).__name__ + (f" ({', '.join(codes)})" if codes else "")


def _driver_message(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's echo of the statement: for ``detail``."""
    error = _driver_error(exc)
    text = f"{type(error).__name__}: {error}".split("\n[SQL:")[0]
    hint = getattr(error, "detail", None)
    if isinstance(hint, str) and hint and hint not in text:
        text += f" DETAIL: {hint}"
    return " ".join(text.split())
