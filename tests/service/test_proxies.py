"""Trusted reverse proxies: whose forwarded client address is believed, and whose is not.

The forwarded scheme (``Secure`` cookies behind a TLS-terminating proxy) is tested with
the dashboard's cookies in ``test_dashboard.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.testing import MemoryConnector
from jobs.settings import Settings, SettingsError
from tests.service.conftest import Api, ApiFactory


async def start(api_factory: ApiFactory, trusted_proxies: tuple[str, ...]) -> Api:
    crm = MemoryConnector("crm", records={})
    return await api_factory(
        {"crm": crm}, worker=False, rate_limit=1, trusted_proxies=trusted_proxies
    )


async def status(api: Api, forwarded_for: str | None) -> int:
    """One unauthenticated API request, counted against the client address it comes from."""
    headers = {"Authorization": "Bearer made-up"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return (await api.request("GET", "/v1/connectors", sub=None, headers=headers))[0]


async def test_a_trusted_proxys_forwarded_client_is_the_one_counted(
    api_factory: ApiFactory,
) -> None:
    api = await start(api_factory, ("127.0.0.0/8", "::1"))
    assert await status(api, "203.0.113.9") == 401
    assert await status(api, "203.0.113.9") == 429
    # What the client wrote in front of the proxy's own entry is not believed...
    assert await status(api, "198.51.100.1, 203.0.113.9") == 429
    # ...and trusted hops after the client are skipped.
    assert await status(api, "203.0.113.9, 127.0.0.5") == 429
    assert await status(api, "203.0.113.10") == 401
    assert await status(api, "2001:db8::1") == 401
    # Without a well-formed header the client is the proxy itself.
    assert await status(api, None) == 401
    assert await status(api, "not-an-address") == 429
    assert await status(api, "203.0.113.11:4711") == 429


@pytest.mark.parametrize("trusted_proxies", [(), ("10.0.0.0/8",)])
async def test_forwarded_headers_from_anyone_else_are_ignored(
    api_factory: ApiFactory, trusted_proxies: tuple[str, ...]
) -> None:
    api = await start(api_factory, trusted_proxies)
    assert await status(api, "203.0.113.9") == 401
    assert await status(api, "203.0.113.10") == 429
    assert await status(api, None) == 429


def test_trusted_proxies_are_addresses_or_networks(tmp_path: Path) -> None:
    settings = Settings.load({"HANDOVER_TRUSTED_PROXIES": " 10.0.0.0/8, 127.0.0.1,::1 "})
    assert [str(net) for net in settings.trusted_proxies] == [
        "10.0.0.0/8",
        "127.0.0.1/32",
        "::1/128",
    ]
    assert Settings.load({}).trusted_proxies == ()
    config = tmp_path / "handover.toml"
    config.write_text('trusted_proxies = ["192.168.0.0/16"]\n')
    loaded = Settings.load({"HANDOVER_CONFIG": str(config)})
    assert [str(net) for net in loaded.trusted_proxies] == ["192.168.0.0/16"]
    for value, needle in (
        ("10.0.0.1/8", "10.0.0.1/8 has host bits set"),
        ("proxy.example", "'proxy.example' is not an IP address or network"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network"),
    ):
        with pytest.raises(SettingsError) as refused:
            Settings.load({"HANDOVER_TRUSTED_PROXIES": value})
        assert str(refused.value).startswith("HANDOVER_TRUSTED_PROXIES: "), value
        assert needle in str(refused.value) and "\n" not in str(refused.value)
