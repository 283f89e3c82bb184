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

The package, one noun per module:

- :mod:`connectors.sql.connector`: :class:`SqlConnector`, its requests and their queries;
- :mod:`connectors.sql.config`: the TOML options parsed into checked table specs;
- :mod:`connectors.sql.schema`: the specs bound to the reflected database, the
  condition reaching the subject's rows, the order tables are erased in;
- :mod:`connectors.sql.errors`: SQLAlchemy and driver errors mapped to transient or
  permanent connector errors.
"""

from connectors.sql.connector import SqlConnector

__all__ = ["SqlConnector"]
