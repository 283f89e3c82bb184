"""The layout holds: imports point service → jobs → connectors; the SDK surface is fixed."""

from __future__ import annotations

import ast
from pathlib import Path

import connectors

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "connectors": {"connectors"},
    "jobs": {"jobs", "connectors"},
    "service": {"service", "jobs", "connectors"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_imports_point_one_way_only() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"no modules found under {package}/"
        for path in files:
            for imported in imported_packages(path) - allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert wrong == []


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from service.app import create_app\nimport jobs.model\n")
    assert imported_packages(module) == {"service", "jobs"}


def test_connector_sdk_surface_is_stable() -> None:
    assert sorted(connectors.__all__) == [
        "Connector",
        "ConnectorError",
        "ConnectorLoadError",
        "Dataset",
        "DatasetErasure",
        "ErasureReport",
        "File",
        "Item",
        "PermanentError",
        "RateLimited",
        "Record",
        "RestrictionReport",
        "RetentionRule",
        "Subject",
        "TransientError",
        "Unidentified",
    ]
    for name in connectors.__all__:
        assert getattr(connectors, name).__doc__, f"{name} has no docstring"
