"""Lumen's connector against Handover's connector contract, plus what is particular to it."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from connectors import Connector, PermanentError, RetentionRule, Subject
from connectors.testing import ConnectorContract

from handover_example_crm import ExampleCrmConnector

SAMPLE = Path(__file__).resolve().parent.parent / "sample-crm.json"
ALICE = Subject("alice", email="alice@example.com")
DEALS_KEPT = {
    "deals": RetentionRule("commercial and tax law: 10 years", timedelta(days=3653)),
}


@pytest.fixture
def crm_file(tmp_path: Path) -> Path:
    path = tmp_path / "lumen.json"
    shutil.copy(SAMPLE, path)
    return path


def read(path: Path) -> dict[str, list[dict[str, Any]]]:
    document: dict[str, list[dict[str, Any]]] = json.loads(path.read_text())
    return document


class TestExampleCrmConnector(ConnectorContract):
    """Deals are retained (commercial law); contacts deleted; activities anonymised."""

    @pytest.fixture(autouse=True)
    def _crm_file(self, crm_file: Path) -> None:
        self.path = crm_file

    async def make_connector(self) -> Connector:
        return ExampleCrmConnector("lumen", path=str(self.path))

    def subject_with_data(self) -> Subject:
        return ALICE

    def subject_without_data(self) -> Subject:
        return Subject("carol", email="carol@example.com")

    def retention(self) -> Mapping[str, RetentionRule]:
        return DEALS_KEPT

    async def make_failing_connector(self) -> Connector | None:
        return ExampleCrmConnector("lumen", path=str(self.path.with_name("gone.json")))


class TestExampleCrmConnectorErasingEverything(TestExampleCrmConnector):
    """No retention: everything of the subject's goes."""

    def retention(self) -> Mapping[str, RetentionRule]:
        return {}


def test_erasure_deletes_blocks_and_anonymises_in_the_document(crm_file: Path) -> None:
    lumen = ExampleCrmConnector("lumen", path=str(crm_file))
    report = asyncio.run(lumen.erase(ALICE, dry_run=False, retention=DEALS_KEPT))
    assert report.dataset("contacts").deleted == 1
    assert report.dataset("deals").retained == 2
    assert report.dataset("activities").anonymised == 2
    document = read(crm_file)
    assert [c["user_id"] for c in document["contacts"]] == ["bob"]
    assert [(d["id"], d["restricted"]) for d in document["deals"]] == [
        ("d-501", True),
        ("d-502", True),
        ("d-503", False),
    ]
    assert [(a["id"], a["user_id"], a["notes"]) for a in document["activities"][:2]] == [
        ("a-901", None, None),
        ("a-902", None, None),
    ]


def test_a_malformed_document_is_a_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "lumen.json"
    path.write_text('{"contacts": {}}')
    with pytest.raises(PermanentError, match="'contacts' is not a list of objects"):
        asyncio.run(ExampleCrmConnector("lumen", path=str(path)).check())
