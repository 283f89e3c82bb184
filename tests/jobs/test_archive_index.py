"""The archive's index.html: a real demo export's page, read as a subject would read it."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import orjson
import pytest
from arq.connections import ArqRedis
from babel.dates import format_datetime
from jinja2.ext import _gettext_alias
from playwright.async_api import expect

from connectors.items import Dataset, Records, Series
from connectors.testing import MemoryConnector
from jobs.archive import index
from jobs.archive.preview import CELL_CHARS, PREVIEW_ROWS, SERIES_POINTS, Gatherer
from jobs.commands import Actor, Commands
from jobs.model import InvalidRequest, JobStatus
from jobs.resources import Resources
from jobs.settings import RecipientConfig, RetentionConfig
from tests.connectors.test_sql import (
    ALICE,
    create_database,
    platform_options,
    table_options,
)
from tests.jobs.test_breach_notices import Directory
from tests.jobs.test_export import drain
from tests.service.test_dashboard import CHROMIUM, chromium_page


class Page(HTMLParser):
    """What a browser would find on the page: links, scripts, external sources, text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.sources: list[str] = []
        self.scripts = 0
        self.svgs = 0
        self.text: list[str] = []
        self.lang = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.lang = values.get("lang") or ""
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "script":
            self.scripts += 1
        if tag == "svg":
            self.svgs += 1
        for name in ("src", "srcset", "data"):
            if values.get(name):
                self.sources.append(values[name] or "")
        if tag == "link":
            self.sources.append(values.get("href") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def words(self) -> str:
        return spaced(" ".join(self.text))


def spaced(text: str) -> str:
    """``text`` with every run of white space (a narrow no-break space too) one space."""
    return re.sub(r"\s+", " ", text)


async def demo_export(
    resources: Resources, redis: ArqRedis, locale: str | None = None, time_zone: str | None = None
) -> zipfile.ZipFile:
    job = await Commands(resources).request_export(
        Actor("alice", staff=False),
        subject="alice",
        formats=["json", "csv"],
        locale=locale,
        time_zone=time_zone,
    )
    await drain(redis, resources)
    done = await resources.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error, done.connectors)
    assert done.result is not None
    # The previews are the subject's data: never in the job record, gone with the staging.
    assert "Thermo S" not in done.model_dump_json(), "a device's model is in the job record"
    staged = [o async for o in resources.storage.list_objects(resources.staging_prefix(job.id))]
    assert staged == [], "the staged data and its previews outlive the archive"
    return zipfile.ZipFile(io.BytesIO(await resources.storage.get(done.result.key)))


def page_of(archive: zipfile.ZipFile) -> tuple[str, Page]:
    html = archive.read("index.html").decode()
    page = Page()
    page.feed(html)
    return html, page


async def test_the_demo_index_links_previews_charts_and_answers_art_15(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    async with resources_factory(public_url="https://privacy.example") as resources:
        archive = await demo_export(resources, redis)
    html, page = page_of(archive)
    manifest = orjson.loads(archive.read("manifest.json"))
    data_files = [f["path"] for f in manifest["files"] if f["connector"]]

    assert set(data_files) <= set(page.links), "every data file is linked"
    assert page.scripts == 0 and page.sources == [], "no script, nothing fetched"
    assert not re.search(r"""(href|src)=["']?(https?:)?//(?!privacy\.example|www\.)""", html)
    assert page.lang == "en"
    words = page.words
    # Every dataset previewed, its columns explained where described.
    telemetry = orjson.loads(archive.read("devices/telemetry.json"))
    assert f"The first {PREVIEW_ROWS} of {len(telemetry)} records" in words
    assert f'title="{telemetry[0]["ts"]}"' in html and telemetry[0]["device_id"] in words
    first = datetime.fromtimestamp(telemetry[0]["ts"], UTC)
    assert spaced(format_datetime(first, "medium", tzinfo=UTC, locale="en")) in words
    assert "the temperature, in degrees Celsius" in words
    for dataset in ("profile", "consents", "devices", "telemetry", "invoices", "newsletter"):
        assert f'aria-label="First records of {dataset}"' in html, dataset
    assert len(html) < 200_000, "the previews and charts are bounded"
    # Telemetry charted per device and value, with readings and period.
    devices = sorted({row["device_id"] for row in telemetry})
    assert page.svgs == 2 * len(devices)
    for device in devices:
        readings = sum(1 for row in telemetry if row["device_id"] == device)
        assert f"temperature of {device}: {readings} readings, from " in words
    # Art. 15(1) and (2), in the demo's words and the settings'.
    for stated in (
        "Thermonet Demo SA, Rue de l'Exemple 12, 1000 Brussels",
        "dpo@thermonet.example",
        "Art. 6(1)(b) GDPR",
        "HubSpot, Inc. (USA)",
        "EU-US Data Privacy Framework",
        "standard contractual clauses",
        "No decision that has legal or similarly significant effects",
        "Rectification (Art. 16)",
        "Erasure (Art. 17)",
        "Restriction (Art. 18)",
        "Objection (Art. 21)",
        "Gegevensbeschermingsautoriteit",
        "Times are given in the UTC time zone.",
    ):
        assert stated in words, stated
    assert "https://www.dataprotectionauthority.be" in page.links
    assert "https://privacy.example/v1/jobs/" in html
    # Human dates, never the records' ISO timestamps, in the page's own sentences.
    assert not re.search(r"asked on \d{4}-\d\d-\d\dT", words)


async def test_the_index_is_written_in_the_subjects_language(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    expected = {
        "fr": ("Votre export de données", "Réclamations", "au total", "relevés"),
        "nl": ("Uw gegevensexport", "Klachten", "in totaal", "metingen"),
        "de": ("Ihr Datenexport", "Beschwerden", "insgesamt", "Messwerte"),
    }
    async with resources_factory() as resources:
        for language, phrases in expected.items():
            archive = await demo_export(resources, redis, locale=f"{language}-BE")
            _, page = page_of(archive)
            assert page.lang == language
            for phrase in phrases:
                assert phrase in page.words, (language, phrase)


@pytest.mark.parametrize("language", ["en", "fr"])
async def test_the_pages_translations_are_jinjas_own_byte_for_byte(
    resources_factory: Callable[..., Any],
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
    language: str,
) -> None:
    rendered: list[dict[str, Any]] = []
    render = index.render

    def noting(**arguments: Any) -> bytes:
        rendered.append(arguments)
        return render(**arguments)

    monkeypatch.setattr(index, "render", noting)
    async with resources_factory() as resources:
        archive = await demo_export(resources, redis, locale=language)
    page = archive.read("index.html")
    # The same page, each text through Jinja's own newstyle gettext (three context
    # calls, the translation escaped as markup, then formatted with its variables).
    environment = index._environment(language)
    monkeypatch.setitem(environment.globals, "_", _gettext_alias)

    def charted(html: bytes) -> bytes:  # each chart's id is drawn afresh (pygal's uuid4)
        return re.sub(rb"chart-[0-9a-f-]{36}", b"chart-id", html)

    assert charted(render(**rendered[0])) == charted(page)
    assert b"%(" not in page and page.count(b"alice") >= 2


async def test_the_index_writes_moments_in_the_time_zone_asked_for(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    async with resources_factory() as resources:
        html, page = page_of(await demo_export(resources, redis, time_zone="Asia/Tokyo"))
        with pytest.raises(InvalidRequest, match="time_zone: unknown time zone 'Mars/Olympus'"):
            await Commands(resources).request_export(
                Actor("bob", staff=False), subject="bob", time_zone="Mars/Olympus"
            )
    assert "Times are given in the Asia/Tokyo time zone." in page.words
    telemetry_first = re.search(r'<time datetime="([^"]+)" title="(\d+)">([^<]+)</time>', html)
    assert telemetry_first is not None
    held = datetime.fromtimestamp(int(telemetry_first.group(2)), UTC)
    tokyo = format_datetime(held, "medium", tzinfo=ZoneInfo("Asia/Tokyo"), locale="en")
    assert spaced(telemetry_first.group(3)) == spaced(tokyo)


async def test_an_export_of_a_period_says_so_and_where_it_was_applied(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    since = datetime(2023, 3, 9, 12, tzinfo=UTC)
    async with resources_factory() as resources:
        job = await Commands(resources).request_export(
            Actor("alice", staff=False), subject="alice", since=since
        )
        await drain(redis, resources)
        done = await resources.store.get(job.id)
        assert done.result is not None
        archive = zipfile.ZipFile(io.BytesIO(await resources.storage.get(done.result.key)))
    _, page = page_of(archive)
    moment = spaced(format_datetime(since, "medium", tzinfo=UTC, locale="en"))
    found = re.search(r"Only what was recorded in a period was asked for: ([^.]*)\.", page.words)
    assert found is not None and found.group(1).strip() == f"from {moment}", page.words[:2000]
    manifest = orjson.loads(archive.read("manifest.json"))
    for connector in manifest["connectors"]:
        stated = connector["period"]
        if stated["applied_to"]:
            assert (
                f"Limited to the period asked for: {', '.join(stated['applied_to'])}." in page.words
            )
        if stated["not_applied_to"]:
            whole = ", ".join(stated["not_applied_to"])
            assert f"cannot limit them to a period: {whole}." in page.words


async def test_a_retention_rule_applied_is_linked_from_its_processor(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    retention = (
        RetentionConfig(
            "invoices", "Tax law: 10 years", timedelta(days=3650), dataset="billing/invoices"
        ),
    )
    async with resources_factory(retention=retention) as resources:
        html, page = page_of(await demo_export(resources, redis))
    assert "#retention-invoices" in page.links
    assert 'id="retention-invoices"' in html
    assert "Tax law: 10 years (10 years)" in page.words


async def test_recipients_that_are_not_connectors_are_listed_in_their_own_section(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    recipients = (
        RecipientConfig("insurer", "privacy@insurer.example", "Insurer of the devices"),
        RecipientConfig("bank", "privacy@bank.example"),
    )
    async with resources_factory(recipients=recipients) as resources:
        html, page = page_of(await demo_export(resources, redis, locale="fr"))
    assert "#recipients" in page.links and 'id="recipients"' in html
    assert "Autres destinataires" in page.words
    assert "insurer : Insurer of the devices" in page.words and "bank" in page.words
    assert "privacy@insurer.example" not in html  # where it is told is not the subject's business


def test_a_preview_stays_bounded_whatever_the_dataset_size() -> None:
    series = Series(time="ts", values=("temperature",), by="device_id")
    gatherer = Gatherer(Dataset("telemetry", "telemetry", series=series))
    long_text = "x" * 10_000
    for start in range(0, 1_000_000, 2000):
        gatherer.add(
            [
                {
                    "device_id": f"d{(start + i) // 100_000}",
                    "ts": start + i,
                    "temperature": 1.5,
                    "note": long_text,
                }
                for i in range(2000)
            ]
        )
    preview = gatherer.result()
    assert len(preview["rows"]) == PREVIEW_ROWS
    assert all(len(cell) <= CELL_CHARS for row in preview["rows"] for cell in row)
    charts = preview["series"]["charts"]
    assert len(charts) == 8 and preview["series"]["readings_not_charted"] == 200_000
    for chart in charts:
        assert chart["readings"] == 100_000
        assert len(chart["points"]) <= SERIES_POINTS
        assert chart["points"][1][0] - chart["points"][0][0] == chart["stride"]
    assert charts[0]["first"] == 0 and charts[0]["last"] == 99_999
    assert len(orjson.dumps(preview)) < 64_000


@pytest.mark.parametrize("value", ["2023-02-01T10:00:00+00:00", 1675245600, 1675245600.0])
def test_a_reading_dated_by_text_or_number_is_charted_at_its_moment(value: object) -> None:
    gatherer = Gatherer(Dataset("t", "telemetry", series=Series("at", ("v",))))
    gatherer.add([{"at": value, "v": 2}, {"at": "not a date", "v": 3}, {"at": 1.7e12, "v": 4}])
    (chart,) = gatherer.result()["series"]["charts"]
    assert chart["points"] == [[1675245600.0, 2.0]]
    assert chart["readings"] == 3 and chart["undated"] == 2


AXE = Path(__file__).parent.parent / "assets" / "axe-core" / "axe.min.js"


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    return CHROMIUM


async def test_chromium_opens_a_real_export_index_and_axe_finds_no_violation(
    resources_factory: Callable[..., Any], redis: ArqRedis, chromium: Path, tmp_path: Path
) -> None:
    async with resources_factory(public_url="https://privacy.example") as resources:
        archive = await demo_export(resources, redis, locale="fr")
    unpacked = tmp_path / "export"
    archive.extractall(unpacked)
    problems: list[str] = []
    async with chromium_page(chromium, tmp_path, problems) as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        await page.goto((unpacked / "index.html").as_uri())
        await expect(page.get_by_role("heading", name="Votre export de données")).to_be_visible()
        charts = page.get_by_role("img", name=re.compile(r"^temperature de alice-dev-1$"))
        await expect(charts).to_be_visible()
        hrefs = await page.evaluate("[...document.links].map(link => link.href)")
        screenshot = tmp_path / "export-index.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
        await page.add_script_tag(path=str(AXE))
        result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    violations = [
        f"{v['id']} ({v['impact']}): {v['help']}: {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
    ]
    assert violations == []
    assert problems == []
    assert all(url.startswith("file://") for url in requested), requested
    files = {unquote(urlsplit(href).path) for href in hrefs if href.startswith("file://")}
    assert str(unpacked / "devices" / "telemetry.csv") in files
    members = {str(unpacked / name) for name in archive.namelist()}
    assert files <= members, "every file link leads to a file of the archive"
    assert screenshot.stat().st_size > 50_000


async def test_nothing_found_is_said_only_of_a_processor_asked_and_a_category_asked_for(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    crm = MemoryConnector(
        "crm",
        records={"alice": {"contacts": [{"email": "alice@example.com"}]}},
        datasets=[
            {"name": "contacts", "category": "identification"},
            {"name": "notes", "category": "identification"},
            {"name": "visits", "category": "usage"},
        ],
    )
    tracker = MemoryConnector(
        "tracker", datasets=[{"name": "sessions", "category": "identification"}]
    )
    tracker.identifiers = frozenset({"email"})
    nobody = Directory({})  # an identity source that knows no address for alice
    async with resources_factory(
        {"crm": crm, "tracker": tracker, "directory": nobody}
    ) as resources:
        commands = Commands(resources)
        job = await commands.request_export(
            Actor("alice", staff=False), subject="alice", categories=["identification"]
        )
        await drain(redis, resources)
        assert (await resources.store.get(job.id)).status is JobStatus.NEEDS_ATTENTION
        await commands.go_without(
            Actor("support-1", staff=True), job.id, ["tracker"], "no cookie id on file"
        )
        await drain(redis, resources)
        done = await resources.store.get(job.id)
        assert done.result is not None, (done.status, done.error)
        archive = zipfile.ZipFile(io.BytesIO(await resources.storage.get(done.result.key)))
    _, page = page_of(archive)
    said = {
        match.group(1): match.group(2).strip()
        for match in re.finditer(
            r"(contacts|notes|visits|sessions) (?:Category: \w+\. )(.*?\.)(?= |$)", page.words
        )
    }
    assert said == {
        "contacts": "Records: 1.",
        "notes": "Nothing of this kind was found for you.",
        "visits": "Not part of this export: its category was not asked for.",
        "sessions": "Not asked (no cookie id on file): this export says nothing about it.",
    }, page.words


async def test_a_sql_series_of_datetimes_and_decimals_charts_and_shows_as_held(
    tmp_path: Path,
) -> None:
    database = await create_database("sqlite", tmp_path)
    try:
        options = platform_options()
        invoices = table_options("invoices", options)
        invoices["series"] = {"time": "issued_at", "values": ["amount"]}
        connector = database.connector(**options)
        await connector.open()
        try:
            dataset = connector.dataset("invoices")
            gatherer = Gatherer(dataset)
            async for batch in connector.export_batches(ALICE):
                if isinstance(batch, Records) and batch.dataset == "invoices":
                    gatherer.add(batch.rows)
        finally:
            await connector.close()
    finally:
        await database.drop()
    preview = gatherer.result()
    (chart,) = preview["series"]["charts"]
    held = datetime(2024, 1, 1, 9, 30, tzinfo=UTC).timestamp()  # the rows' naive EPOCH
    assert chart["points"] == [[held, 19.99], [held, 7.5]]
    assert (chart["first"], chart["last"], chart["undated"], chart["naive"]) == (
        held,
        held,
        0,
        True,
    )
    row = dict(zip(preview["columns"], preview["rows"][0], strict=True))
    assert (row["amount"], row["issued_at"]) == ("19.99", "2024-01-01T09:30:00")


async def test_epoch_milliseconds_are_undated_and_naive_times_are_shown_as_held(
    resources_factory: Callable[..., Any], redis: ArqRedis
) -> None:
    naive = "2024-03-01T09:30:00"
    records: dict[str, dict[str, list[dict[str, Any]]]] = {
        "alice": {
            "meter": [{"at_ms": 1_700_000_000_000 + n, "watts": n} for n in range(3)],
            "logins": [{"at": naive, "count": 1}, {"at": "2024-03-02T09:30:00", "count": 2}],
        }
    }
    datasets = [
        {"name": "meter", "category": "usage", "series": Series("at_ms", ("watts",))},
        {"name": "logins", "category": "usage", "series": Series("at", ("count",))},
    ]
    crm = MemoryConnector("crm", records=records, datasets=datasets)
    async with resources_factory({"crm": crm}) as resources:
        job = await Commands(resources).request_export(
            Actor("alice", staff=False), subject="alice", time_zone="Asia/Tokyo"
        )
        await drain(redis, resources)
        done = await resources.store.get(job.id)
        assert done.result is not None, (done.status, done.error)
        archive = zipfile.ZipFile(io.BytesIO(await resources.storage.get(done.result.key)))
    html, page = page_of(archive)
    words = page.words
    assert "watts: 3 readings." in words and "3 readings have no usable time" in words
    wall = spaced(
        format_datetime(datetime(2024, 3, 1, 9, 30, tzinfo=UTC), "medium", tzinfo=UTC, locale="en")
    )
    assert f'<time datetime="{naive}" title="{naive}">' in html
    assert f"from {wall} to" in words, words
    assert "time as held, zone unknown" in html
    assert "Its times are as held: the data does not say in which time zone." in words
    tokyo = spaced(
        format_datetime(
            datetime(2024, 3, 1, 9, 30, tzinfo=UTC), "medium", tzinfo=ZoneInfo("Asia/Tokyo")
        )
    )
    assert tokyo not in words, "a naive time was converted into the reader's zone"
