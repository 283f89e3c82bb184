"""``handover connectors new NAME``: an installable connector package whose contract tests pass.

Its files are written from the templates in ``templates/`` beside this module (package
data), filled in by :class:`string.Template` with the names :class:`PackageNames`
derives from the type name: ``$type_name``, ``$distribution``, ``$module``,
``$class_name`` and ``$title``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
MAX_NAME = 24  # keeps the generated code within 100 columns
TEMPLATES = Path(__file__).parent / "templates"


class ScaffoldError(Exception):
    """The package cannot be scaffolded; the message says why."""


@dataclass(frozen=True)
class PackageNames:
    """The names a connector package derives from its type name (``acme-crm``)."""

    type_name: str
    distribution: str
    module: str
    class_name: str
    title: str

    @classmethod
    def for_type(cls, type_name: str) -> PackageNames:
        """Names for ``type_name``, which must be lowercase words joined by ``-``."""
        if not NAME_PATTERN.fullmatch(type_name) or len(type_name) > MAX_NAME:
            raise ScaffoldError(
                f"connector name {type_name!r}: use lowercase letters and digits in words joined "
                f"by '-', starting with a letter, e.g. acme-crm (at most {MAX_NAME} characters)"
            )
        words = type_name.split("-")
        return cls(
            type_name=type_name,
            distribution=f"handover-{type_name}",
            module="handover_" + "_".join(words),
            class_name="".join(word.capitalize() for word in words) + "Connector",
            title=" ".join(word.capitalize() for word in words),
        )


def _template(name: str) -> str:
    """The template a generated file is written from: ``templates/NAME.tmpl``."""
    return (TEMPLATES / f"{name}.tmpl").read_text(encoding="utf-8")


def scaffold(type_name: str, directory: Path | None = None) -> Path:
    """Write a connector package for ``type_name``; returns its directory."""
    names = PackageNames.for_type(type_name)
    target = directory if directory is not None else Path(names.distribution)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not an empty directory")
    values = {
        "type_name": names.type_name,
        "distribution": names.distribution,
        "module": names.module,
        "class_name": names.class_name,
        "title": names.title,
    }
    files = {
        "pyproject.toml": _template("pyproject.toml"),
        "README.md": _template("README.md"),
        f"{names.module}/__init__.py": _template("__init__.py"),
        f"{names.module}/connector.py": _template("connector.py"),
        f"{names.module}/py.typed": "",
        "tests/test_contract.py": _template("test_contract.py"),
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values), encoding="utf-8")
    return target


def next_steps(type_name: str, created: Path) -> str:
    """What to do after ``connectors new``."""
    names = PackageNames.for_type(type_name)
    return (
        f"Created {created}/ ({names.distribution}: connector type {type_name!r}).\n"
        "Next:\n"
        f"  pip install -e {created}          # next to Handover, in the same environment\n"
        f"  pytest {created}/tests            # the contract tests pass as generated\n"
        f"  edit {created}/{names.module}/connector.py: replace InMemoryClient with the "
        "processor's API\n"
        "  handover connectors list          # shows the new type\n"
        "Walk-through: docs/connectors.md"
    )
