"""What a ``handover worker`` process loads: the SQL stack only when a ``sql`` connector is
configured (SQLAlchemy and its drivers are about 10 MB of every worker's memory), and
never the API's own modules (its routes, pages and OpenAPI, about 4 MB), which only
``handover serve`` and ``handover api`` import, and the chart library only once an archive
has a chart to draw; SQLite only for the demo (no connectors configured) or a ``sql``
connector. aiohttp (about 10 MB) only with a connector that speaks HTTP, and
otherwise with the first webhook it delivers; botocore (about 7 MB before its client) only
when archives go to S3, and never boto3 (s3transfer and ``multiprocessing`` with it, about
2 MB more): the store is built on botocore's own client.

Each case runs the real command, ``handover worker --burst``, under ``python -X
importtime``, which names every module the process imported.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import boto3

from tests.conftest import REDIS_URL

HTTP_CONNECTOR = """
[connectors.tickets]
type = "http"
base_url = "http://127.0.0.1:9"
erase = { method = "DELETE", path = "/users/{id}" }

[[connectors.tickets.datasets]]
name = "tickets"
category = "usage"
path = "/users/{id}/tickets"
"""

SQL_CONNECTOR = """
[connectors.platform]
type = "sql"
url = "sqlite:///{database}"
hash_key = "a key of at least thirty-two characters, for hashing"

[[connectors.platform.tables]]
table = "users"
dataset = "profile"
category = "identification"
subject_column = "id"
erase = "delete"
"""

MANUAL_CONNECTOR = """
[connectors.archives]
type = "manual"
checklist = ["Search the cabinets"]
identifiers = ["id"]
"""

SQL_STACK = ("sqlalchemy", "asyncpg", "aiomysql", "pymysql", "aiosqlite")
#: What only a process that serves the API needs (``service.app`` and what it routes to).
API_MODULES = (
    "service.app",
    "service.dashboard",
    "service.privacy",
    "service.docs",
    "service.openapi",
    "service.replies",
    "service.breach_pages",
    "service.report_pages",
)


def imported_by_a_worker(tmp_path: Path, config: str, **settings: str) -> set[str]:
    """The modules a burst worker with ``config`` (and ``HANDOVER_<setting>`` for each of
    ``settings``) imported, by their full names."""
    path = tmp_path / "handover.toml"
    path.write_text(config)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    environ |= {
        "HANDOVER_CONFIG": str(path),
        "HANDOVER_REDIS_URL": REDIS_URL,
        "HANDOVER_DATA_DIR": str(tmp_path / "data"),
    }
    environ |= {f"HANDOVER_{name.upper()}": value for name, value in settings.items()}
    worker = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "service.cli", "worker", "--burst"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    return {
        found.group(1)
        for found in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", worker.stderr, re.M)
    }


def packages(modules: set[str]) -> set[str]:
    """The top-level packages of ``modules``."""
    return {module.split(".")[0] for module in modules}


def test_a_worker_without_a_sql_connector_loads_no_sql_stack(tmp_path: Path) -> None:
    imported = packages(imported_by_a_worker(tmp_path, HTTP_CONNECTOR))

    assert "aiohttp" in imported, "the import log was read"
    assert not imported & set(SQL_STACK)


def test_a_worker_loads_none_of_the_api(tmp_path: Path) -> None:
    imported = imported_by_a_worker(tmp_path, HTTP_CONNECTOR)

    assert "jobs.worker" in imported, "the import log was read"
    served = {m for m in imported if m in API_MODULES or m.startswith("service.api.")}
    assert not served


def test_a_worker_with_nothing_to_reach_over_http_loads_no_aiohttp(tmp_path: Path) -> None:
    imported = imported_by_a_worker(tmp_path, MANUAL_CONNECTOR)

    assert "jobs.worker" in imported, "the import log was read"
    # yarl too (about 1 MB with multidict and idna): the API client's (`handover export`).
    assert not packages(imported) & {"aiohttp", "yarl", "multidict"}


def test_a_worker_with_connectors_configured_loads_no_sqlite(tmp_path: Path) -> None:
    imported = packages(imported_by_a_worker(tmp_path, MANUAL_CONNECTOR))

    assert "jobs" in imported, "the import log was read"
    assert "sqlite3" not in imported  # about 1 MB; the demo's database, run without connectors


def test_a_worker_on_the_local_store_loads_no_boto3(tmp_path: Path) -> None:
    imported = packages(imported_by_a_worker(tmp_path, MANUAL_CONNECTOR))

    assert "jobs" in imported, "the import log was read"
    assert not imported & {"boto3", "botocore", "s3transfer"}


def test_a_worker_on_s3_loads_botocore_alone_and_sets_the_buckets_expiry_rules_at_start(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    imported = packages(
        imported_by_a_worker(
            tmp_path, MANUAL_CONNECTOR, s3_bucket=bucket, s3_endpoint_url=s3_endpoint
        )
    )

    assert "botocore" in imported
    assert not imported & {"boto3", "s3transfer", "multiprocessing"}
    rules = boto3.client("s3", endpoint_url=s3_endpoint).get_bucket_lifecycle_configuration(
        Bucket=bucket
    )["Rules"]
    assert {rule["ID"] for rule in rules} == {
        "handover-archives-handover/",
        "handover-staging-handover/",
        "handover-multipart-handover/",
    }


def test_a_worker_loads_no_chart_library_until_it_draws_a_chart(tmp_path: Path) -> None:
    imported = packages(imported_by_a_worker(tmp_path, HTTP_CONNECTOR))

    assert "jobs" in imported, "the import log was read"
    assert "pygal" not in imported  # about 1.6 MB; imported by the first archive with a chart


def test_a_worker_with_a_sql_connector_loads_it(tmp_path: Path) -> None:
    database = tmp_path / "platform.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("create table users (id text primary key, email text)")

    imported = packages(imported_by_a_worker(tmp_path, SQL_CONNECTOR.format(database=database)))

    assert "sqlalchemy" in imported
