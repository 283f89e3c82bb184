"""The ``email`` and ``manual`` connector types: their options, what they ask, and that they
never answer by themselves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.byhand import EmailConnector, Erased, ManualConnector, Reply, reply_file
from connectors.errors import ConnectorLoadError, PermanentError
from connectors.items import File, Subject
from connectors.registry import ConnectorConfig, build_connectors

ALICE = Subject("alice", email="alice@example.com", identities={"payroll_id": "P-7"})


def test_an_email_processor_is_asked_only_for_the_identifiers_it_keys_its_data_by() -> None:
    payroll = EmailConnector("payroll", to="privacy@payroll.example", identifiers=["payroll_id"])
    asked = payroll.request(ALICE, "erasure")
    assert dict(asked.identifiers) == {"payroll_id": "P-7"}
    assert asked.article.startswith("Art. 17")
    assert payroll.describe()["by_hand"] == "email"
    assert payroll.describe()["contact"] == "privacy@payroll.example"
    with pytest.raises(PermanentError, match="cannot ask a person for 'gossip'"):
        payroll.request(ALICE, "gossip")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "to must be non-empty text"),
        ({"to": "two@a.example, three@b.example"}, "must be one email address"),
        ({"to": "a@b.example", "identifiers": []}, "must name at least one identifier"),
        ({"to": "a@b.example", "reply_within_days": 0}, "reply_within_days must be a whole"),
        ({"to": "a@b.example", "cc": "x@y.example"}, "unknown option"),
    ],
)
def test_a_misconfigured_email_connector_is_refused_naming_the_option(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        EmailConnector("payroll", **options)


def test_the_types_are_built_from_configuration_like_any_other() -> None:
    built = build_connectors(
        [
            ConnectorConfig("payroll", "email", {"to": "privacy@payroll.example"}),
            ConnectorConfig("archive-room", "manual", {"checklist": ["Search the cabinets"]}),
        ]
    )
    assert isinstance(built["payroll"], EmailConnector)
    room = built["archive-room"]
    assert isinstance(room, ManualConnector) and room.checklist == ("Search the cabinets",)
    with pytest.raises(ConnectorLoadError, match="checklist must be a list"):
        build_connectors([ConnectorConfig("room", "manual", {"checklist": "search"})])


async def test_without_a_reply_it_never_answers_and_a_dry_run_says_nobody_was_asked() -> None:
    room = ManualConnector("archive-room")
    with pytest.raises(PermanentError, match="answers only with a person's reply"):
        await room.erase(ALICE, dry_run=False, retention={})
    with pytest.raises(PermanentError, match="answers only with a person's reply"):
        [item async for item in room.export(ALICE)]
    dry = await room.erase(ALICE, dry_run=True, retention={})
    assert dry.datasets == () and dry.note is not None and "not asked" in dry.note
    assert not (await room.restrict(ALICE, dry_run=True)).supported


async def test_a_reply_answers_the_export_and_the_erasure() -> None:
    room = ManualConnector("archive-room")
    at = datetime(2027, 1, 4, tzinfo=UTC)
    scan = reply_file("scan.pdf", b"%PDF", "application/pdf")
    answered = room.answered(
        Reply(
            by="sam",
            at=at,
            files=(scan,),
            lines=(
                Erased("contracts", "kept", 2, "commercial code", at),
                Erased("forms", "erased", 1),
            ),
        )
    )
    items = [item async for item in answered.export(ALICE)]
    assert items == [scan] and isinstance(items[0], File) and items[0].dataset == "files"
    report = await answered.erase(ALICE, dry_run=False, retention={})
    assert report.dataset("contracts").retained == 2
    assert report.dataset("contracts").legal_basis == "commercial code"
    assert report.dataset("forms").deleted == 1
    statement = answered.statement()
    assert statement["given_by"] == "sam" and statement["given_at"] == "2027-01-04T00:00:00Z"
    assert answered.verification()["passed"] is None


async def test_a_reply_answers_an_objection_purpose_by_purpose_never_guessing() -> None:
    crm = EmailConnector("crm-agency", to="privacy@agency.example")
    at = datetime(2027, 1, 4, tzinfo=UTC)
    answered = crm.answered(
        Reply(
            by="dpo",
            at=at,
            lines=(Erased("direct_marketing", "stopped", 3), Erased("profiling", "not_found")),
        )
    )
    report = await answered.object(ALICE, ["direct_marketing", "profiling", "analytics"])
    by_purpose = {entry.purpose: entry for entry in report.purposes}
    assert by_purpose["direct_marketing"].stopped == 3 and by_purpose["direct_marketing"].supported
    assert by_purpose["profiling"].stopped == 0 and by_purpose["profiling"].supported
    assert not by_purpose["analytics"].supported  # not in the statement: not claimed as done
