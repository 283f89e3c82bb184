"""The privacy center walked in Chromium as a subject would, with axe-core on every page.

Alice signs in through the local OpenID provider (her ``locale`` claim is French), opens
the objection and rectification forms, asks for a copy of her last 30 days, watches it
finish live (the page is not reloaded), downloads it and checks its signature; then asks
for erasure, confirms it, sees the grace period and cancels. axe-core
(``tests/assets/axe-core``, never fetched at run time) runs on each page and must find no
violation of WCAG 2.1 A and AA; the page may load nothing from elsewhere. Screenshots of
the main pages are kept in the test's directory (the README's come from a run of this
test). The same walk is then made on ``handover serve``'s demo, as a new user of
``make demo`` would: the demo sign-in in French, the last 30 days, an erasure canceled
within its grace period (``HANDOVER_ERASURE_GRACE=10m``).
"""

from __future__ import annotations

import asyncio
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from playwright.async_api import Page, expect

from jobs.archive.verify import fetch_keys, verify_file
from jobs.settings import Secret
from tests.conftest import free_port
from tests.oidcprovider import CLIENT_ID, CLIENT_SECRET, LocalProvider, local_provider
from tests.polling import eventually
from tests.service.conftest import ApiFactory
from tests.service.test_dashboard import CHROMIUM, GatedConnector, chromium_page
from tests.service.test_processes import Process, clean_env

AXE = Path(__file__).parent.parent / "assets" / "axe-core" / "axe.min.js"
AXE_RUN = (
    "axe.run(document, {runOnly: {type: 'tag', values: "
    "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}, resultTypes: ['violations']})"
)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.stop()


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    async with local_provider() as running:
        running.claims["alice"] = {
            "locale": "fr",
            "email": "alice@example.com",
            "email_verified": True,
        }
        yield running


async def no_violations(page: Page, where: str, found: list[str]) -> None:
    """Run axe-core in the page (evaluated through the DevTools protocol, as CSP allows)."""
    await page.evaluate(AXE.read_text() + "\n;true")
    result = await page.evaluate(AXE_RUN)
    assert result["testEngine"]["name"] == "axe-core", "axe did not run"
    found.extend(
        f"{where}: {v['id']} ({v['impact']}): {v['help']}: {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
    )


async def test_a_subject_walks_the_privacy_center_in_french_with_no_accessibility_violation(
    api_factory: ApiFactory, provider: LocalProvider, chromium: Path, tmp_path: Path
) -> None:
    crm = GatedConnector(
        "crm",
        records={"alice": {"contacts": [{"id": "alice", "email": "alice@example.com"}]}},
        objection_purposes=["direct_marketing"],
    )
    api = await api_factory(
        {"crm": crm},
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=Secret(CLIENT_SECRET),
        erasure_grace="1h",
    )
    problems: list[str] = []
    violations: list[str] = []
    elsewhere: list[str] = []
    shots = tmp_path / "shots"
    async with chromium_page(chromium, tmp_path, problems) as page:
        allowed = (api.base, provider.issuer, "http://127.0.0.1")
        page.on(
            "request",
            lambda request: (
                None if request.url.startswith(allowed) else elsewhere.append(request.url)
            ),
        )
        await page.goto(f"{api.base}/privacy")
        await expect(page).to_have_url(re.compile(r"/privacy/sign-in\?next="))
        await no_violations(page, "sign-in", violations)
        await page.get_by_role("link", name="Sign in with your account").click()
        await expect(page.get_by_role("heading", name="Mes demandes")).to_be_visible()
        await expect(page.locator("html")).to_have_attribute("lang", "fr")
        await no_violations(page, "home (empty)", violations)
        await page.get_by_role("link", name="M'opposer à un traitement").click()
        await expect(page.get_by_role("checkbox", name=re.compile("^Prospection"))).to_be_checked()
        await no_violations(page, "objection form", violations)
        await page.get_by_role("link", name="Mes demandes").first.click()
        await page.get_by_role("link", name="Corriger mes données").click()
        await no_violations(page, "rectification form", violations)
        await page.get_by_role("link", name="Mes demandes").first.click()

        # A copy of her data, watched live.
        crm.gate.clear()
        await page.get_by_role("link", name="Obtenir une copie de mes données").click()
        await no_violations(page, "export form", violations)
        await page.screenshot(path=str(shots / "privacy-export-form.png"))
        await page.get_by_role("checkbox", name="CSV").check()
        await page.get_by_role("radio", name="Les 30 derniers jours").check()
        await page.get_by_role("button", name="Demander ma copie").click()
        await expect(page.locator(".flash-ok")).to_contain_text("Votre demande est reçue")
        status = page.locator("[data-job-status]")
        await expect(status).not_to_have_text("terminé")
        await page.evaluate("window.sameDocument = true")
        await no_violations(page, "request (running)", violations)
        crm.gate.set()
        await expect(status).to_have_text("terminé")
        await expect(page.locator('tr[data-connector="crm"]')).to_have_attribute(
            "data-status", "succeeded"
        )
        assert await page.evaluate("window.sameDocument") is True, "the page was reloaded"
        await expect(page.get_by_text("Votre copie est prête")).to_be_visible()
        await expect(page.locator("[data-period]")).to_contain_text(" au …")
        await expect(page.locator('[data-period-for="crm"]')).to_have_text(
            "ne peut pas sélectionner par date : tout est envoyé"
        )
        await page.reload()
        await expect(page.locator('li[data-notice="acknowledged"]')).to_have_count(1)
        await no_violations(page, "request (done)", violations)
        await page.screenshot(path=str(shots / "privacy-export-ready.png"), full_page=True)
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="Télécharger ma copie").click()
        download = await download_info.value
        archive = tmp_path / (download.suggested_filename or "export.zip")
        await download.save_as(archive)

        # Erasure: asked, confirmed, canceled within the grace period.
        await page.get_by_role("link", name="Mes demandes").first.click()
        await page.get_by_role("link", name="Effacer mes données").click()
        await no_violations(page, "erasure form", violations)
        await page.get_by_label("Pourquoi (facultatif)").fill("Je quitte la plateforme.")
        await page.get_by_role("button", name="Demander l'effacement").click()
        await expect(status).to_have_attribute("data-job-status", "awaiting_confirmation")
        await no_violations(page, "erasure (to confirm)", violations)
        await page.get_by_role("button", name="Confirmer l'effacement").click()
        await expect(page.locator(".flash-ok")).to_have_text("Effacement confirmé.")
        await expect(page.locator("[data-grace-until]")).to_contain_text("L'effacement commence")
        await no_violations(page, "erasure (grace)", violations)
        await page.screenshot(path=str(shots / "privacy-erasure-grace.png"), full_page=True)
        await page.get_by_role("button", name="Annuler cette demande").click()
        await expect(status).to_have_text("annulée")
        await page.get_by_role("link", name="Mes demandes").first.click()
        await expect(page.locator("tr[data-job-id]")).to_have_count(2)
        await no_violations(page, "home", violations)
        await page.screenshot(path=str(shots / "privacy-requests.png"), full_page=True)

    assert violations == []
    assert problems == []
    assert elsewhere == []
    keys = await asyncio.to_thread(fetch_keys, f"{api.base}/v1/keys")
    verified = verify_file(archive, keys)
    assert verified.ok, verified.problems
    print(f"screenshots: {shots}")


async def test_the_demo_walked_in_french_as_a_new_user_would(
    chromium: Path, tmp_path: Path, processes: list[Process]
) -> None:
    """``make demo``'s privacy center: the demo sign-in in French, a copy of the last 30 days
    downloaded and verified, an erasure confirmed and canceled within its grace period."""
    port = free_port()
    env = clean_env(HANDOVER_DATA_DIR=str(tmp_path / "data"), HANDOVER_ERASURE_GRACE="10m")
    serve = Process(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    processes.append(serve)
    banner = await eventually(
        serve.output,
        until=lambda output: "Support token" in output,
        timeout=30,
        what="the serve banner",
    )
    found = re.search(r"Privacy center \(sign in as a demo subject\): (\S+)", banner)
    assert found, banner
    base = f"http://127.0.0.1:{port}"
    problems: list[str] = []
    violations: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        await page.goto(found.group(1))
        await no_violations(page, "demo sign-in", violations)
        await page.get_by_role("radio", name="alice").check()
        await page.get_by_label("Language").select_option(label="Français")
        await page.get_by_role("button", name="Sign in to the demo").click()
        await expect(page.get_by_role("heading", name="Mes demandes")).to_be_visible()

        await page.get_by_role("link", name="Obtenir une copie de mes données").click()
        await page.get_by_role("radio", name="Les 30 derniers jours").check()
        await page.get_by_role("button", name="Demander ma copie").click()
        await page.evaluate("window.sameDocument = true")
        await expect(page.locator("[data-job-status]")).to_have_text("terminé", timeout=60_000)
        assert await page.evaluate("window.sameDocument") is True, "the page was reloaded"
        await expect(page.locator('[data-period-for="devices"]')).to_have_text(
            "appliquée, sauf : devices (envoyés en entier)"
        )
        await no_violations(page, "demo export", violations)
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="Télécharger ma copie").click()
        archive = tmp_path / "demo-export.zip"
        await (await download_info.value).save_as(archive)

        await page.get_by_role("link", name="Mes demandes").first.click()
        await page.get_by_role("link", name="Effacer mes données").click()
        await page.get_by_role("button", name="Demander l'effacement").click()
        await page.get_by_role("button", name="Confirmer l'effacement").click()
        await expect(page.locator("[data-grace-until]")).to_be_visible()
        await no_violations(page, "demo erasure (grace)", violations)
        await page.get_by_role("button", name="Annuler cette demande").click()
        await expect(page.locator("[data-job-status]")).to_have_text("annulée")
    assert violations == []
    assert problems == []
    keys = await asyncio.to_thread(fetch_keys, f"{base}/v1/keys")
    verified = verify_file(archive, keys)
    assert verified.ok, verified.problems
    manifest = orjson.loads(zipfile.ZipFile(archive).read("manifest.json"))
    assert set(manifest["scope"]["period"]) == {"since"}
    stated = {entry["name"]: entry.get("period") for entry in manifest["connectors"]}
    assert stated["devices"]["applied_to"] == ["telemetry"]
    assert stated["profile"]["applied_to"] == []
