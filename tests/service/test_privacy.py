"""The privacy center over HTTP: sign-in through a real local OpenID provider (code flow,
PKCE, state, nonce), sessions and CSRF, a subject's own requests only, the fresh sign-in
an erasure confirmation needs, and the language of the pages.

The walk in Chromium, with axe-core on every page, is ``test_privacy_browser.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from aiohttp import ClientResponse, ClientSession, CookieJar
from babel.messages.extract import extract_from_file
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

import service.privacy
from connectors.testing import MemoryConnector
from jobs.archive.verify import fetch_keys, verify_file
from jobs.search import JobQuery
from jobs.settings import Secret, Settings, SettingsError
from service.privacy import LANGUAGES, LOCALE_DIR, TEMPLATES, accepted_language
from tests.conftest import free_port
from tests.oidcprovider import CLIENT_ID, CLIENT_SECRET, LocalProvider, local_provider
from tests.polling import eventually
from tests.service.conftest import Api, ApiFactory
from tests.service.test_dashboard import GatedConnector
from tests.service.test_processes import Process, clean_env

PRIVACY_SOURCE = Path(service.privacy.__file__)


def crm() -> MemoryConnector:
    return MemoryConnector("crm", records={s: {"contacts": [{"id": s}]} for s in ("alice", "bob")})


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    async with local_provider() as running:
        running.claims["alice"] = {
            "locale": "fr-BE",
            "email": "alice@example.com",
            "email_verified": True,
        }
        yield running


async def privacy_api(
    api_factory: ApiFactory,
    provider: LocalProvider,
    connectors: dict[str, Any] | None = None,
    **more: Any,
) -> Api:
    return await api_factory(
        {"crm": crm(), **(connectors or {})},
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=Secret(CLIENT_SECRET),
        **more,
    )


@dataclass
class Browser:
    """A plain HTTP client that keeps cookies and follows redirects one at a time."""

    api: Api
    session: ClientSession

    async def go(self, url: str, **kwargs: Any) -> tuple[ClientResponse, str]:
        if url.startswith("/"):
            url = self.api.base + url
        method = "POST" if "data" in kwargs else "GET"
        async with self.session.request(method, url, allow_redirects=False, **kwargs) as answer:
            return answer, await answer.text()

    async def sign_in(self, target: str = "/privacy", *, fresh: bool = False) -> str:
        """Through the provider and back; the page signed in lands on."""
        start = f"/privacy/login?next={target}" + ("&fresh=1" if fresh else "")
        response, _ = await self.go(start)
        assert response.status == 303, response
        authorize, _ = await self.go(response.headers["Location"])
        assert authorize.status == 302
        back, body = await self.go(authorize.headers["Location"])
        assert back.status == 303, body
        return back.headers["Location"]

    async def csrf(self, path: str) -> str:
        _, page = await self.go(path)
        found = re.search(r'name="csrf" value="([^"]+)"', page)
        assert found, page
        return found.group(1)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.stop()


@pytest.fixture
async def browser_factory() -> AsyncIterator[Any]:
    sessions: list[ClientSession] = []

    def make(api: Api) -> Browser:
        session = ClientSession(cookie_jar=CookieJar(unsafe=True))
        sessions.append(session)
        return Browser(api, session)

    yield make
    for session in sessions:
        await session.close()


async def test_a_subject_signs_in_with_the_code_flow_and_pkce_and_sees_pages_in_their_language(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    api = await privacy_api(api_factory, provider)
    browser = browser_factory(api)
    response, _ = await browser.go("/privacy")
    assert response.status == 303
    assert response.headers["Location"] == "/privacy/sign-in?next=%2Fprivacy"

    response, _ = await browser.go("/privacy/login?next=/privacy/export")
    assert response.status == 303
    sent = urlsplit(response.headers["Location"])
    assert f"{sent.scheme}://{sent.netloc}{sent.path}" == f"{provider.issuer}/authorize"
    query = {key: values[0] for key, values in parse_qs(sent.query).items()}
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == f"{api.base}/privacy/callback"
    assert query["scope"] == "openid email profile"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43
    assert "prompt" not in query
    flow = response.cookies["handover_privacy_flow"]
    assert flow["httponly"] and flow["samesite"] == "Lax" and flow["path"] == "/privacy/callback"

    authorize, _ = await browser.go(response.headers["Location"])
    back, _ = await browser.go(authorize.headers["Location"])
    assert back.status == 303 and back.headers["Location"] == "/privacy/export"
    session = back.cookies["handover_privacy"]
    assert session["httponly"] and session["samesite"] == "Lax" and session["path"] == "/privacy"
    client, form = provider.token_requests[-1]
    assert client == CLIENT_ID, "the client secret goes as HTTP Basic"
    digest = hashlib.sha256(form["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).decode().rstrip("=") == query["code_challenge"]

    response, page = await browser.go("/privacy", headers={"Accept-Language": "de"})
    assert response.status == 200
    assert '<html lang="fr">' in page, "the locale claim wins over the browser's languages"
    assert "Mes demandes" in page and "Connecté en tant que alice" in page
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "http://" not in page.replace(api.base, ""), "no third-party assets"


async def test_a_callback_that_is_not_this_browsers_flow_signs_no_one_in(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    api = await privacy_api(api_factory, provider)
    browser = browser_factory(api)
    response, _ = await browser.go("/privacy/login")
    authorize, _ = await browser.go(response.headers["Location"])
    callback = urlsplit(authorize.headers["Location"])
    code = parse_qs(callback.query)["code"][0]

    forged, page = await browser.go(f"/privacy/callback?code={code}&state=someone-elses")
    assert forged.status == 401
    assert "(state)" in page and "handover_privacy" not in forged.cookies

    stranger = browser_factory(api)
    answer, page = await stranger.go(f"{api.base}/privacy/callback?{callback.query}")
    assert answer.status == 401, "no flow cookie: not started here"
    assert "was not started here" in page


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        ("nonce", "nonce is not this sign-in"),
        ("aud", "audience (aud)"),
        ("iss", "issuer (iss)"),
        ("key", "signature does not verify"),
    ],
)
async def test_an_id_token_that_is_not_right_is_refused(
    api_factory: ApiFactory,
    provider: LocalProvider,
    browser_factory: Any,
    tamper: str,
    says: str,
) -> None:
    api = await privacy_api(api_factory, provider)
    provider.tamper = tamper
    browser = browser_factory(api)
    response, _ = await browser.go("/privacy/login")
    authorize, _ = await browser.go(response.headers["Location"])
    back, page = await browser.go(authorize.headers["Location"])
    assert back.status == 401
    assert says in page
    assert "handover_privacy" not in back.cookies
    signed_out, _ = await browser.go("/privacy")
    assert signed_out.status == 303


async def test_forms_need_their_csrf_token_and_this_site_as_origin(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    api = await privacy_api(api_factory, provider)
    browser = browser_factory(api)
    await browser.sign_in()
    csrf = await browser.csrf("/privacy/export")
    bare, _ = await browser.go("/privacy/export", data={"format": "json"})
    assert bare.status == 403
    elsewhere, _ = await browser.go(
        "/privacy/export",
        data={"csrf": csrf, "format": "json"},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert elsewhere.status == 403
    assert (await api.resources.store.search(_mine("alice"))).jobs == []

    made, _ = await browser.go("/privacy/export", data={"csrf": csrf, "format": "csv"})
    assert made.status == 303
    job_id = made.headers["Location"].rsplit("/", 1)[1]
    job = await api.wait(job_id)
    assert job["status"] == "succeeded"
    stored = await api.resources.store.get(job_id)
    assert stored.export_options.formats == ["csv"]
    assert stored.options.locale == "fr-BE"
    assert stored.identity.evidence[0]["verified_by"] == "sign-in (email_verified)"


def _mine(subject: str) -> Any:
    from service.api import models

    return models.JobSearch.model_validate({"subject": subject}).to_query()


async def test_a_subject_sees_only_their_own_requests(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    api = await privacy_api(api_factory, provider)
    bobs = await api.export(sub="bob")
    browser = browser_factory(api)
    await browser.sign_in()
    response, page = await browser.go(f"/privacy/requests/{bobs['id']}")
    assert response.status == 404
    assert bobs["id"] in page and "bob" not in page.replace(bobs["id"], "")
    _, home = await browser.go("/privacy")
    assert bobs["id"] not in home
    download, _ = await browser.go(f"/privacy/requests/{bobs['id']}/receipt")
    assert download.status == 404


async def test_confirming_an_erasure_needs_a_fresh_sign_in_and_the_grace_period_can_be_used(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    api = await privacy_api(api_factory, provider, erasure_grace="1h")
    provider.authenticated["alice"] = 0  # signed in at the provider long ago
    browser = browser_factory(api)
    await browser.sign_in()
    _, form = await browser.go("/privacy/erase")
    assert "l&#39;annuler pendant 1 h avant le début" in form
    csrf = await browser.csrf("/privacy/erase")
    asked, _ = await browser.go("/privacy/erase", data={"csrf": csrf, "reason": "leaving"})
    assert asked.status == 303
    page_path = asked.headers["Location"]
    job_id = page_path.rsplit("/", 1)[1]
    _, page = await browser.go(page_path)
    assert "Se reconnecter pour confirmer" in page
    assert 'action="/privacy/requests/' not in page.split("Confirmer")[1][:200]

    stale, _ = await browser.go(f"{page_path}/confirm", data={"csrf": csrf})
    assert stale.status == 303
    _, page = await browser.go(page_path)
    assert "reconnectez-vous d&#39;abord" in page
    assert (await api.job(job_id))["status"] == "awaiting_confirmation"

    landed = await browser.sign_in(page_path, fresh=True)
    assert landed == page_path
    assert provider.authorize_requests[-1]["prompt"] == "login"
    assert provider.authorize_requests[-1]["max_age"] == "0"
    csrf = await browser.csrf(page_path)
    confirmed, _ = await browser.go(f"{page_path}/confirm", data={"csrf": csrf})
    assert confirmed.status == 303
    _, page = await browser.go(page_path)
    assert "Effacement confirmé." in page and "data-grace-until" in page
    canceled, _ = await browser.go(f"{page_path}/cancel", data={"csrf": csrf})
    assert canceled.status == 303
    assert (await api.job(job_id))["status"] == "canceled"


async def test_a_second_export_while_one_is_under_way_leads_to_the_first(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    slow = GatedConnector("crm", records={"alice": {"contacts": [{"id": "alice"}]}})
    slow.gate.clear()
    api = await privacy_api(api_factory, provider, {"crm": slow})
    browser = browser_factory(api)
    await browser.sign_in()
    csrf = await browser.csrf("/privacy/export")
    first, _ = await browser.go("/privacy/export", data={"csrf": csrf})
    again, _ = await browser.go("/privacy/export", data={"csrf": csrf})
    assert again.status == 303
    assert again.headers["Location"] == first.headers["Location"]
    _, page = await browser.go(first.headers["Location"])
    assert "Vous avez déjà une demande de ce type en cours" in page
    slow.gate.set()
    assert (await api.wait(first.headers["Location"].rsplit("/", 1)[1]))["status"] == "succeeded"


def test_the_browsers_preferred_language_among_ours() -> None:
    assert accepted_language("nl-BE,nl;q=0.9,en;q=0.5") == "nl"
    assert accepted_language("es, de;q=0.8, fr;q=0.9") == "fr"
    assert accepted_language("de;q=0, en;q=0.1") == "en"
    assert accepted_language("ja, zh") is None
    assert accepted_language("fr;q=abc, de") == "de"


def test_an_issuer_needs_a_client_id_and_https() -> None:
    with pytest.raises(SettingsError, match="HANDOVER_OIDC_CLIENT_ID: required"):
        Settings.load({"HANDOVER_OIDC_ISSUER": "https://id.example.com"})
    with pytest.raises(SettingsError, match="HANDOVER_OIDC_ISSUER: expected an https://"):
        Settings.load(
            {"HANDOVER_OIDC_ISSUER": "http://id.example.com", "HANDOVER_OIDC_CLIENT_ID": "x"}
        )


async def test_a_receipt_is_shown_per_processor_and_downloads_signed(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any, tmp_path: Path
) -> None:
    api = await privacy_api(api_factory, provider)
    status, _, job = await api.request("POST", "/v1/restrictions", json={})
    assert status == 202, job
    assert (await api.wait(job["id"]))["status"] == "succeeded"
    browser = browser_factory(api)
    await browser.sign_in()
    _, home = await browser.go("/privacy")
    assert f'href="/privacy/requests/{job["id"]}"' in home.split("Limitations")[-1]
    _, page = await browser.go(f"/privacy/requests/{job['id']}")
    assert 'data-receipt-for="crm"' in page
    assert f"handover verify FILE --keys-url {api.base}/v1/keys" in page
    response, body = await browser.go(f"/privacy/requests/{job['id']}/receipt")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="handover-receipt-{job["id"]}.json"'
    )
    receipt = tmp_path / "receipt.json"
    receipt.write_text(body)
    keys = await asyncio.to_thread(fetch_keys, f"{api.base}/v1/keys")
    verified = verify_file(receipt, keys)
    assert verified.ok, verified.problems


async def test_the_embedded_demo_signs_in_a_demo_subject_in_the_language_picked(
    tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    env = clean_env(HANDOVER_DATA_DIR=str(tmp_path / "data"))
    serve = Process(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    processes.append(serve)
    banner = await eventually(
        serve.output,
        until=lambda output: "Support token" in output,
        timeout=30,
        what="the serve banner",
    )
    base = f"http://127.0.0.1:{port}"
    assert f"Privacy center (sign in as a demo subject): {base}/privacy/sign-in\n" in banner
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/privacy/sign-in", allow_redirects=False) as response:
            page = await response.text()
        assert "Demo: sign in as a demo subject" in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        form = {"csrf": csrf.group(1), "subject": "mallory", "language": "nl", "next": "/privacy"}
        async with session.post(f"{base}/privacy/demo", data=form) as response:
            assert response.status == 422
            assert "Kies een van de demopersonen." in await response.text()
        form["subject"] = "carol"
        async with session.post(
            f"{base}/privacy/demo", data=form, headers={"Origin": "https://evil.example"}
        ) as response:
            assert response.status == 403
        async with session.post(f"{base}/privacy/demo", data=form) as response:
            assert response.status == 200 and response.url.path == "/privacy"
            page = await response.text()
        assert '<html lang="nl">' in page and "Aangemeld als carol" in page


def test_every_text_of_the_privacy_center_is_translated_and_compiled() -> None:
    texts = {str(m) for _, m, _, _ in extract_from_file("python", str(PRIVACY_SOURCE))}
    for template in sorted(TEMPLATES.glob("*.html")):
        texts |= {str(m) for _, m, _, _ in extract_from_file("jinja2", str(template))}
    assert len(texts) > 100
    placeholders = re.compile(r"%\([a-z_]+\)[sd]")
    for language in LANGUAGES[1:]:
        folder = LOCALE_DIR / language / "LC_MESSAGES"
        with (folder / "privacy.po").open("rb") as handle:
            catalog = read_po(handle)
        translated = {
            str(m.id): str(m.string) for m in catalog if m.id and not m.fuzzy and m.string
        }
        assert set(translated) == texts, f"{language}: untranslated or stale texts"
        for text, translation in translated.items():
            assert sorted(placeholders.findall(text)) == sorted(placeholders.findall(translation))
        with (folder / "privacy.mo").open("rb") as handle:
            compiled = {str(m.id): str(m.string) for m in read_mo(handle) if m.id}
        assert compiled == translated, f"{language}: run `make catalogs` to compile the .po"


async def test_the_export_form_asks_for_dates_as_whole_days_in_utc(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    api = await privacy_api(api_factory, provider)
    browser = browser_factory(api)
    await browser.sign_in()
    csrf = await browser.csrf("/privacy/export")
    bad = {"csrf": csrf, "period": "dates", "since": "01/11/2026"}
    refused, _ = await browser.go("/privacy/export", data=bad)
    assert refused.status == 303 and refused.headers["Location"] == "/privacy/export"
    _, form = await browser.go("/privacy/export")
    assert "since: &#39;01/11/2026&#39; is not a date (YYYY-MM-DD)" in form
    for wrong, says in (
        ({"until": "9999-12-31"}, "until: &#39;9999-12-31&#39; is past the last date there is"),
        ({}, "since: give a first day, a last day, or both"),
        ({"since": " ", "until": ""}, "since: give a first day, a last day, or both"),
    ):
        refused, _ = await browser.go(
            "/privacy/export", data={"csrf": csrf, "period": "dates", **wrong}
        )
        assert refused.status == 303 and refused.headers["Location"] == "/privacy/export"
        _, form = await browser.go("/privacy/export")
        assert says in form
    assert (await api.resources.store.search(JobQuery(limit=10))).jobs == []  # none made
    dates = {"csrf": csrf, "period": "dates", "since": "2026-11-01", "until": "2026-11-30"}
    made, _ = await browser.go("/privacy/export", data=dates)
    job_id = made.headers["Location"].rsplit("/", 1)[1]
    period = (await api.resources.store.get(job_id)).export_options.scope.period
    assert period is not None
    assert period.period.statement() == {
        "since": "2026-11-01T00:00:00Z",
        "until": "2026-12-01T00:00:00Z",
    }
    _, page = await browser.go(made.headers["Location"])
    assert "du 2026-11-01 00:00 UTC au 2026-12-01 00:00 UTC" in page


async def test_a_subject_objects_to_direct_marketing_and_it_stops_at_once(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    crm = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"id": "alice"}]}},
        objection_purposes=["direct_marketing"],
    )
    api = await privacy_api(api_factory, provider, {"crm": crm})
    browser = browser_factory(api)
    await browser.sign_in()
    _, form = await browser.go("/privacy/object")
    assert 'value="direct_marketing" checked' in form
    csrf = await browser.csrf("/privacy/object")
    made, _ = await browser.go(
        "/privacy/object", data={"csrf": csrf, "purpose": "direct_marketing"}
    )
    assert made.status == 303
    job_id = made.headers["Location"].rsplit("/", 1)[1]
    done = await api.wait(job_id)
    assert done["kind"] == "objection" and done["status"] == "succeeded", done
    assert ("alice", "direct_marketing") in crm.objected
    _, page = await browser.go(made.headers["Location"])
    assert "Opposition" in page and 'data-job-status="succeeded"' in page
    nothing, _ = await browser.go("/privacy/object", data={"csrf": csrf})
    assert nothing.status == 303 and nothing.headers["Location"] == "/privacy/object"


async def test_a_subject_corrects_a_field_the_processor_declares_rectifiable(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    crm = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"id": "alice", "name": "Alice", "age": 30}]}},
        rectifiable={"contacts.name": "text", "contacts.age": "integer"},
    )
    api = await privacy_api(api_factory, provider, {"crm": crm})
    browser = browser_factory(api)
    await browser.sign_in()
    _, form = await browser.go("/privacy/rectify")
    assert '<option value="crm/contacts/name">contacts.name (crm)</option>' in form
    csrf = await browser.csrf("/privacy/rectify")
    wrong = {"csrf": csrf, "field": "crm/contacts/age", "value": "thirty"}
    refused, _ = await browser.go("/privacy/rectify", data=wrong)
    assert refused.headers["Location"] == "/privacy/rectify"
    _, form = await browser.go("/privacy/rectify")
    assert "value: expected integer, got &#39;thirty&#39;" in form
    unknown = {"csrf": csrf, "field": "crm/contacts/id", "value": "bob"}
    refused, _ = await browser.go("/privacy/rectify", data=unknown)
    assert refused.headers["Location"] == "/privacy/rectify"

    right = {"csrf": csrf, "field": "crm/contacts/name", "value": " Alice Dupont "}
    made, _ = await browser.go("/privacy/rectify", data=right)
    job_id = made.headers["Location"].rsplit("/", 1)[1]
    done = await api.wait(job_id)
    assert done["kind"] == "rectification" and done["status"] == "succeeded", done
    assert crm.records["alice"]["contacts"][0]["name"] == "Alice Dupont"


async def test_the_request_pages_stream_sends_every_event_as_a_message(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    api = await privacy_api(api_factory, provider)
    browser = browser_factory(api)
    await browser.sign_in()
    csrf = await browser.csrf("/privacy/export")
    made, _ = await browser.go("/privacy/export", data={"csrf": csrf, "format": "json"})
    job_id = made.headers["Location"].rsplit("/", 1)[1]
    assert (await api.wait(job_id))["status"] == "succeeded"
    response, stream = await browser.go(f"/privacy/requests/{job_id}/events")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    blocks = [block for block in stream.split("\n\n") if block.startswith("id:")]
    # Unnamed, so the page's one ``message`` listener sees every type (identity.resolved,
    # processor.asked, staging.lost… as well as those a list would have named).
    assert blocks and not [block for block in blocks if "\nevent:" in block]
    types = {orjson.loads(block.split("\ndata: ", 1)[1])["type"] for block in blocks}
    assert {"created", "connector.succeeded", "succeeded"} <= types


async def test_a_period_is_stated_only_for_processors_that_were_asked(
    api_factory: ApiFactory, provider: LocalProvider, browser_factory: Any
) -> None:
    phone_book = MemoryConnector("phone-book", records={"alice": {"numbers": [{"n": 1}]}})
    phone_book.identifiers = frozenset({"phone_number"})  # alice's is known to nobody
    api = await privacy_api(api_factory, provider, {"phone-book": phone_book})
    browser = browser_factory(api)
    await browser.sign_in()
    csrf = await browser.csrf("/privacy/export")
    dates = {"csrf": csrf, "period": "dates", "since": "2026-11-01", "until": "2026-11-30"}
    made, _ = await browser.go("/privacy/export", data=dates)
    job_id = made.headers["Location"].rsplit("/", 1)[1]
    await api.wait(job_id, "needs_attention", sub="s1", roles=("support",))
    status, _, decided = await api.request(
        "POST",
        f"/v1/jobs/{job_id}/go-without",
        sub="s1",
        roles=("support",),
        json={"connectors": ["phone-book"], "reason": "no phone number known"},
    )
    assert status == 200, decided
    assert (await api.wait(job_id, sub="s1", roles=("support",)))["status"] == "succeeded"
    _, page = await browser.go(made.headers["Location"])
    cells = dict(re.findall(r'data-period-for="([^"]+)">\s*([^<]*?)\s*</td>', page))
    assert cells["phone-book"] == "non interrogé"  # never "applied"
    assert cells["crm"] not in {"", "non interrogé"}
    manifest = orjson.loads((await api.archive(job_id, api.auth())).read("manifest.json"))
    stated = {entry["name"]: entry for entry in manifest["connectors"]}
    assert stated["phone-book"]["asked"] is False and "period" not in stated["phone-book"]
    assert stated["crm"]["period"]["not_applied_to"] == ["contacts"]
