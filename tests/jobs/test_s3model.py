"""The trimmed botocore data the store's S3 clients are built on (jobs/storage/s3model.py).

The store the suite builds (``s3_store``, and every worker's) is on the directory
``make install`` writes, so every S3 test runs on it; these tests check that it is, that
it holds every operation jobs/storage/s3.py calls (found in its source, so a new call
cannot slip by), that a missing or stale directory falls back to botocore's full data
with a word why, and that writing it is atomic and idempotent.
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore
import pytest

from jobs.storage import s3model
from jobs.storage.s3 import OPERATIONS, S3Store

SOURCE = Path(s3model.__file__).with_name("s3.py")
#: Client methods that are no S3 operation; a presigned or paginated one names its own.
HELPERS = {"close", "get_paginator", "generate_presigned_url"}
MADE_BY = "run `make install` or `python -m jobs.storage.s3model`"


def calls_on_clients(source: str) -> tuple[set[str], set[str], set[str]]:
    """Methods called on ``….client`` or ``….presigner`` in ``source``: (every method, the
    operations paginated, the operations presigned)."""
    methods: set[str] = set()
    paginated: set[str] = set()
    presigned: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Attribute):
            continue
        if node.value.attr not in {"client", "_presigner"}:
            continue
        methods.add(node.attr)
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        function, arguments = node.func, node.args
        if isinstance(function, ast.Attribute) and function.attr == "to_thread" and arguments:
            function, arguments = arguments[0], arguments[1:]  # asyncio.to_thread(method, ...)
        if not isinstance(function, ast.Attribute):
            continue
        named = {
            arg.value
            for arg in arguments[:1]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        }
        if function.attr == "get_paginator":
            paginated |= named
        elif function.attr == "generate_presigned_url":
            presigned |= named
    return methods, paginated, presigned


def operations_of(client: Any) -> set[str]:
    return set(client.meta.service_model.operation_names)


def test_every_operation_the_store_calls_is_in_the_trimmed_model(s3_store: S3Store) -> None:
    methods, paginated, presigned = calls_on_clients(SOURCE.read_text())
    full = boto3.session.Session().client("s3", region_name="us-east-1")
    api = full.meta.method_to_api_mapping
    called = {name for name in methods if name in api} | paginated | presigned

    assert methods - set(api) <= HELPERS, "a method on a client that S3 does not have"
    assert {"upload_part_copy", "put_bucket_lifecycle_configuration"} <= called
    assert paginated == {"list_objects_v2"}
    assert presigned == {"get_object"}
    assert {api[name] for name in called} <= set(OPERATIONS)
    trimmed = s3_store.client
    assert operations_of(trimmed) == set(OPERATIONS), MADE_BY
    assert all(hasattr(trimmed, name) for name in called)
    assert all(trimmed.can_paginate(name) for name in paginated)
    full.close()


def test_the_suites_store_is_built_on_the_trimmed_data(s3_endpoint: str, bucket: str) -> None:
    store = S3Store(bucket, endpoint_url=s3_endpoint, public_endpoint_url=s3_endpoint)

    for client in (store.client, store._presigner):
        assert operations_of(client) == set(OPERATIONS), MADE_BY
        assert client._loader.search_paths[0] == str(s3model.DIRECTORY)  # type: ignore[attr-defined]
        with pytest.raises(AttributeError):
            client.list_buckets  # noqa: B018  # type: ignore[attr-defined]
    assert store.client.meta.region_name == "us-east-1"


def made_with(directory: Path, **stamp: Any) -> Path:
    """A trimmed data directory at ``directory`` whose stamp says ``stamp``'s values."""
    s3model.build(directory, OPERATIONS)
    path = directory / s3model.STAMP
    path.write_text(json.dumps(json.loads(path.read_text()) | stamp))
    return directory


def fallback_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "handover.storage" and "botocore's full data" in record.getMessage()
    ]


@pytest.mark.parametrize(
    ("stamp", "said"),
    [
        (None, ["no trimmed botocore data at", "python -m jobs.storage.s3model"]),
        ({"botocore": "1.0.0"}, ["botocore 1.0.0", f"this is botocore {botocore.__version__}"]),
        ({"operations": ["GetObject"]}, ["holds other operations"]),
        ({"format": 0}, ["cut by another version of Handover"]),
    ],
    ids=["missing", "stale", "other-operations", "other-format"],
)
def test_a_missing_or_stale_directory_falls_back_to_the_full_model_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stamp: dict[str, Any] | None, said: list[str]
) -> None:
    directory = tmp_path / "botocore-data"
    if stamp is not None:
        made_with(directory, **stamp)
    caplog.set_level(logging.WARNING, logger="handover.storage")

    clients = [
        s3model.session(OPERATIONS, directory).create_client("s3", region_name="us-east-1")
        for _ in range(2)
    ]

    for client in clients:
        assert "ListBuckets" in operations_of(client)
        assert str(directory) not in client._loader.search_paths  # type: ignore[attr-defined]
        client.close()
    [message] = fallback_logged(caplog)  # once, for both
    assert all(part in message for part in said), message


def test_a_directory_made_here_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = made_with(tmp_path / "botocore-data")

    client = s3model.session(OPERATIONS, directory).create_client("s3", region_name="us-east-1")

    assert operations_of(client) == set(OPERATIONS)
    assert client.can_paginate("list_objects_v2")
    assert fallback_logged(caplog) == []
    client.close()


def test_an_operators_data_path_is_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path / "models"))
    caplog.set_level(logging.WARNING, logger="handover.storage")

    client = s3model.session(OPERATIONS).create_client("s3", region_name="us-east-1")

    assert "ListBuckets" in operations_of(client)
    assert client._loader.search_paths[0] == str(tmp_path / "models")  # type: ignore[attr-defined]
    [message] = fallback_logged(caplog)
    assert "AWS_DATA_PATH" in message
    client.close()


def files_under(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Each file's and folder's content (none for a folder) and mode, by relative path."""
    return {
        str(path.relative_to(directory)): (
            path.read_bytes() if path.is_file() else b"",
            path.stat().st_mode & 0o777,
        )
        for path in sorted(directory.rglob("*"))
    }


def test_writing_it_twice_writes_the_same_readable_directory(tmp_path: Path) -> None:
    directory = tmp_path / "botocore-data"
    command = [sys.executable, "-m", "jobs.storage.s3model", str(directory)]

    subprocess.run(command, check=True, capture_output=True, timeout=60)
    first = files_under(directory)
    subprocess.run(command, check=True, capture_output=True, timeout=60)

    assert files_under(directory) == first
    assert [path.name for path in tmp_path.iterdir()] == ["botocore-data"], "nothing left over"
    assert {mode for _, mode in first.values()} == {0o644, 0o755}
    stamp = json.loads((directory / s3model.STAMP).read_text())
    assert stamp == {
        "format": s3model.FORMAT,
        "botocore": botocore.__version__,
        "operations": sorted(OPERATIONS),
    }
    endpoints = json.loads((directory / "endpoints.json").read_text())
    assert {partition["partition"] for partition in endpoints["partitions"]} >= {"aws", "aws-cn"}
    assert all(
        set(partition["services"]) <= s3model.ENDPOINT_SERVICES and partition["regions"]
        for partition in endpoints["partitions"]
    )


def test_a_failed_write_leaves_the_directory_there_as_it_was(tmp_path: Path) -> None:
    directory = made_with(tmp_path / "botocore-data")
    before = files_under(directory)

    with pytest.raises(KeyError, match="NoSuchOperation"):
        s3model.build(directory, [*OPERATIONS, "NoSuchOperation"])

    assert files_under(directory) == before
    assert [path.name for path in tmp_path.iterdir()] == ["botocore-data"], "nothing left over"
