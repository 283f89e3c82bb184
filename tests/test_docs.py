"""The README stays true to the code: its settings table lists exactly the settings there are."""

from __future__ import annotations

import re
from pathlib import Path

from jobs.settings import VARIABLES

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_settings_table_matches_the_settings() -> None:
    rows = re.findall(r"^\| `(HANDOVER_[A-Z0-9_]+)` \|", README.read_text(), flags=re.MULTILINE)
    documented = set(rows) - {"HANDOVER_CONFIG"}
    assert len(rows) == len(set(rows)), "a setting is listed twice"
    assert documented == set(VARIABLES)
