"""A connector package from outside the source tree, installed with pip, in a real export.

``examples/handover-example-crm`` is built and installed by pip like any third-party
package; Handover finds it through its entry point alone and exports its records.
It is installed into a directory of its own put on this process's ``sys.path`` (a
site directory as good as the venv's own for discovery), so test runs sharing the
venv neither see it nor race to install and uninstall it.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis

from connectors.registry import ConnectorConfig, available_types, build_connectors
from jobs.commands import Actor, Commands
from jobs.model import JobStatus
from jobs.resources import Resources
from jobs.worker import create_worker

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "handover-example-crm"
MODULE = "handover_example_crm"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install --no-deps`` of the example into a fresh site directory on ``sys.path``."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)  # pip builds in the source tree: keep ours clean
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    sys.path.insert(0, str(target))
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m == MODULE or m.startswith(f"{MODULE}.")]:
            del sys.modules[name]


def test_the_installed_package_is_found_through_its_entry_point(site: Path) -> None:
    entry_point = available_types()["example-crm"]
    assert entry_point.dist is not None
    assert (entry_point.dist.name, entry_point.dist.version) == ("handover-example-crm", "1.0.0")
    assert entry_point.value == f"{MODULE}.connector:ExampleCrmConnector"


def test_its_own_contract_tests_pass_against_the_installed_copy(site: Path) -> None:
    environ = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:asyncio",  # the contract kit needs no asyncio plugin
            str(EXAMPLE / "tests"),
        ],
        cwd=EXAMPLE,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "34 passed" in result.stdout, result.stdout


async def drain(redis: ArqRedis, resources: Resources) -> Any:
    worker = create_worker(
        resources.settings,
        redis=redis,
        resources=resources,
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )
    await worker.main()
    return worker


async def test_its_records_appear_in_an_export(
    site: Path,
    tmp_path: Path,
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
) -> None:
    document = tmp_path / "lumen.json"
    shutil.copy(EXAMPLE / "sample-crm.json", document)
    connectors = build_connectors(
        [ConnectorConfig("lumen", "example-crm", {"path": str(document)})]
    )
    lumen = connectors["lumen"]
    assert type(lumen).__module__ == f"{MODULE}.connector"
    assert Path(sys.modules[MODULE].__file__ or "").is_relative_to(site)
    async with resources_factory(connectors) as resources:
        job = await Commands(resources).request_export(
            Actor("alice", staff=False), subject="alice", formats=["json", "csv"]
        )
        worker = await drain(redis, resources)
        assert worker.jobs_failed == 0
        done = await resources.store.get(job.id)
        assert done.status is JobStatus.SUCCEEDED, done.connectors
        assert done.result is not None
        archive = zipfile.ZipFile(io.BytesIO(await resources.storage.get(done.result.key)))
    sample = orjson.loads(document.read_bytes())
    for dataset in ("contacts", "deals", "activities"):
        exported = orjson.loads(archive.read(f"lumen/{dataset}.json"))
        assert exported == [r for r in sample[dataset] if r["user_id"] == "alice"]
        assert archive.read(f"lumen/{dataset}.csv").startswith(b"id,user_id,")
    manifest = orjson.loads(archive.read("manifest.json"))
    paths = {entry["path"] for entry in manifest["files"]}
    assert {"lumen/contacts.json", "lumen/deals.csv", "lumen/activities.json"} <= paths
