"""``handover connectors new | list | check``, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(
    *args: str, cwd: Path, config: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    environ.update(HANDOVER_DATA_DIR=str(cwd / "data"), PYTHONDONTWRITEBYTECODE="1", **env)
    if config is not None:
        environ["HANDOVER_CONFIG"] = str(config)
    return subprocess.run(
        args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300, check=False
    )


def handover(*args: str, cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "service.cli", "connectors", *args, cwd=cwd, config=config)


def rows(output: str) -> dict[str, list[str]]:
    """Table rows by their first cell."""
    return {line.split()[0]: line.split() for line in output.splitlines() if line.strip()}


@pytest.fixture
def scaffolded(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A package made by ``connectors new``, pip-installed (editable) into the venv meanwhile."""
    name = f"t{uuid.uuid4().hex[:8]}-crm"
    created = handover("new", name, "--dir", str(tmp_path / "pkg"), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    package = tmp_path / "pkg"
    install = run(
        sys.executable, "-m", "pip", "install", "--no-deps", "-e", str(package), cwd=tmp_path
    )
    assert install.returncode == 0, install.stdout + install.stderr
    try:
        yield name, package
    finally:
        uninstall = run(
            sys.executable, "-m", "pip", "uninstall", "-y", f"handover-{name}", cwd=tmp_path
        )
        assert uninstall.returncode == 0, uninstall.stdout + uninstall.stderr


def test_new_scaffolds_a_package_that_installs_lists_and_passes_its_contract_tests(
    scaffolded: tuple[str, Path], tmp_path: Path
) -> None:
    name, package = scaffolded
    module = "handover_" + name.replace("-", "_")
    listed = handover("list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert rows(listed.stdout)[name] == [
        name,
        f"handover-{name}",
        "0.1.0",
        f"{module}.connector:{name[0].upper()}{name[1:9]}CrmConnector",
    ]
    tests = run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(package / "tests"),
        cwd=package,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "16 passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout


def test_the_scaffold_is_formatted_linted_and_typed(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    assert handover("new", "acme-crm", "--dir", str(package), cwd=tmp_path).returncode == 0
    for command in (
        [str(BIN / "ruff"), "format", "--check", "--no-cache", "."],
        [str(BIN / "ruff"), "check", "--no-cache", "."],
        [str(BIN / "mypy"), "--strict", "--cache-dir", str(tmp_path / "mypy"), "."],
    ):
        result = run(*command, cwd=package, MYPYPATH=str(ROOT))
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


def test_new_names_the_package_after_the_type_by_default(tmp_path: Path) -> None:
    result = handover("new", "acme-crm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "handover-acme-crm" / "handover_acme_crm" / "connector.py").is_file()
    assert result.stdout.startswith(
        "Created handover-acme-crm/ (handover-acme-crm: connector type 'acme-crm')."
    )
    package = tmp_path / "handover-acme-crm"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "README.md",
        "handover_acme_crm/__init__.py",
        "handover_acme_crm/connector.py",
        "handover_acme_crm/py.typed",
        "pyproject.toml",
        "tests/test_contract.py",
    ]
    pyproject = (package / "pyproject.toml").read_text()
    assert 'acme-crm = "handover_acme_crm.connector:AcmeCrmConnector"' in pyproject


@pytest.mark.parametrize("name", ["Acme", "acme_crm", "acme-", "acme--crm", "9lives", "a" * 25])
def test_new_refuses_a_name_that_is_no_type_name(tmp_path: Path, name: str) -> None:
    result = handover("new", name, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"handover: connector name {name!r}: use lowercase letters")
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_to_write_over_a_directory_in_use(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "notes.txt").write_text("mine")
    result = handover("new", "acme-crm", "--dir", str(tmp_path / "pkg"), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr
        == f"handover: {tmp_path / 'pkg'} already exists and is not an empty directory\n"
    )
    assert [p.name for p in (tmp_path / "pkg").iterdir()] == ["notes.txt"]


def write_config(tmp_path: Path, tables: str) -> Path:
    config = tmp_path / "handover.toml"
    config.write_text(textwrap.dedent(tables))
    return config


def test_list_shows_installed_types_and_configured_connectors_without_options(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        """
        [connectors.crm]
        type = "memory"
        fail = "api key sk_live_do_not_print"

        [connectors.billing]
        type = "salesforse"
        """,
    )
    result = handover("list", cwd=tmp_path, config=config)
    assert result.returncode == 0, result.stderr
    installed, configured = result.stdout.split("\n\n")
    assert installed.splitlines()[:2] == [
        "Installed connector types",
        installed.splitlines()[1],
    ]
    types = rows(installed)
    assert types["memory"][1:] == [
        "handover-test-connectors",
        "0",
        "connectors.testing:MemoryConnector",
    ]
    assert types["s3files"][3] == "connectors.s3files:S3FilesConnector"
    assert configured.splitlines() == [
        "Configured connectors",
        "NAME     TYPE        INSTALLED",
        "crm      memory      yes",
        "billing  salesforse  no: not installed",
    ]
    assert "sk_live" not in result.stdout


def test_list_shows_the_demo_set_when_nothing_is_configured(tmp_path: Path) -> None:
    result = handover("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    demo = result.stdout.split("\n\n")[1].splitlines()
    assert demo[0] == "Demo connectors (none set)"
    assert demo[1].split() == ["NAME", "TYPE", "INSTALLED"]
    assert [(row.split()[0], row.split()[-1]) for row in demo[2:]] == [
        ("profile", "yes"),
        ("devices", "yes"),
        ("billing", "yes"),
        ("newsletter", "yes"),
    ]


def test_check_reports_each_connector_and_fails_when_one_does(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    config = write_config(
        tmp_path,
        f"""
        [connectors.crm]
        type = "memory"

        [connectors.uploads]
        type = "s3files"
        bucket = "{bucket}"
        prefix = "uploads/{{subject}}/"
        endpoint_url = "{s3_endpoint}"

        [connectors.archive]
        type = "s3files"
        bucket = "no-such-bucket-{bucket}"
        prefix = "files/{{subject}}/"
        endpoint_url = "{s3_endpoint}"

        [connectors.billing]
        type = "salesforse"

        [connectors.telemetry]
        type = "synthetic"
        colour = "red"
        """,
    )
    result = handover("check", cwd=tmp_path, config=config)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "STATUS", "DETAIL"]
    found = rows(result.stdout)
    assert found["crm"] == ["crm", "memory", "ok"]
    assert found["uploads"] == ["uploads", "s3files", "ok"]
    assert found["archive"][:4] == ["archive", "s3files", "error", "permanent:"]
    assert "the bucket does not exist" in lines[3]
    assert found["billing"][:4] == ["billing", "salesforse", "error", "cannot"]
    assert "unknown connector type 'salesforse' (installed: " in lines[4]
    assert found["telemetry"][:4] == ["telemetry", "synthetic", "error", "cannot"]
    assert "connector 'telemetry' could not be built" in lines[5]
    assert lines[-1] == "2 of 5 connectors ok"


def test_check_passes_when_every_connector_is_healthy(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=bucket, Key="uploads/alice/a.txt", Body=b"a"
    )
    config = write_config(
        tmp_path,
        f"""
        [connectors.uploads]
        type = "s3files"
        bucket = "{bucket}"
        prefix = "uploads/{{subject}}/"
        endpoint_url = "{s3_endpoint}"
        """,
    )
    result = handover("check", cwd=tmp_path, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "1 of 1 connectors ok"


def test_check_runs_the_demo_set_when_nothing_is_configured(tmp_path: Path) -> None:
    result = handover("check", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(row[0], row[2]) for row in rows(result.stdout).values()][1:5] == [
        ("profile", "ok"),
        ("devices", "ok"),
        ("billing", "ok"),
        ("newsletter", "ok"),
    ]
    assert result.stdout.splitlines()[-1] == "4 of 4 connectors ok"


def test_check_refuses_a_bad_timeout(tmp_path: Path) -> None:
    result = handover("check", "--timeout", "soon", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("handover: --timeout: expected a duration")


def test_a_bad_configuration_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[connectors.crm]\nfail = 1\n")
    result = handover("list", cwd=tmp_path, config=config)
    assert result.returncode == 2
    assert result.stderr == (
        f'handover: HANDOVER_CONFIG: {config}: [connectors.crm] needs a type = "..."\n'
    )
