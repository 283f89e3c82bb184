"""Reply links: signed, expiring, bound to one request; and the settings an email
connector needs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from jobs.handoff import ReplyLink, ReplyRefused
from jobs.resources import Resources
from jobs.settings import Settings, SettingsError

JOB = "01JD2Z6S41ABCDEFGHJKMNPQRS"


@pytest.fixture
async def resources(resources_factory: Callable[..., Any]) -> AsyncIterator[Resources]:
    async with resources_factory({}) as opened:
        yield opened


async def test_a_reply_link_round_trips_and_refuses_any_change(resources: Resources) -> None:
    link = ReplyLink(JOB, "payroll", 2, "4530b38f60a67295", int(time.time()) + 60)
    token = link.token(resources)
    assert ReplyLink.parse(resources, token) == link
    body, mac = token.rsplit(".", 1)
    changed = [
        token.replace(".payroll.", ".billing."),
        token.replace(".2.", ".3."),
        f"{body[:-1]}{'1' if body.endswith('0') else '0'}.{mac}",
        f"{body}.{'0' * 32}",
        "not-a-token",
        "",
    ]
    for forged in changed:
        with pytest.raises(ReplyRefused) as refused:
            ReplyLink.parse(resources, forged)
        assert refused.value.reason == "invalid", forged


async def test_an_expired_reply_link_says_when_it_expired(resources: Resources) -> None:
    link = ReplyLink(JOB, "payroll", 1, "4530b38f60a67295", 1_800_000_000)
    with pytest.raises(ReplyRefused) as refused:
        ReplyLink.parse(resources, link.token(resources), now=1_800_000_000)
    assert refused.value.reason == "expired"
    assert "expired on 2027-01-15T08:00:00Z" in str(refused.value)
    assert ReplyLink.parse(resources, link.token(resources), now=1_799_999_999) == link


def test_an_email_connector_with_smtp_needs_the_public_url(tmp_path: Path) -> None:
    config = tmp_path / "handover.toml"
    config.write_text('[connectors.payroll]\ntype = "email"\nto = "privacy@payroll.example"\n')
    environ = {
        "HANDOVER_CONFIG": str(config),
        "HANDOVER_SMTP_URL": "smtp://127.0.0.1:2525",
        "HANDOVER_MAIL_FROM": "privacy@platform.example",
        "HANDOVER_PRIVACY_URL": "https://privacy.platform.example/{job}",
    }
    with pytest.raises(SettingsError, match=r"HANDOVER_PUBLIC_URL: required with an email"):
        Settings.load(environ)
    public = {**environ, "HANDOVER_PUBLIC_URL": "https://handover.platform.example"}
    assert Settings.load(public).public_url == "https://handover.platform.example"
