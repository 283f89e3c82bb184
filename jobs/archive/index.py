"""The archive's ``index.html``: the subject's answer to "what do you hold on me?", readable.

Opened offline in any browser, with no script and nothing fetched, it gives the whole
answer GDPR Art. 15 asks for:

- who the controller is, how to reach them and the data protection officer
  (:class:`Statement`, from ``HANDOVER_CONTROLLER``, ``HANDOVER_CONTROLLER_CONTACT``,
  ``HANDOVER_DPO_CONTACT``);
- per processor (Art. 15(1)(a)–(d), (g)) the purposes, legal basis, recipients,
  retention period (linked to the ``[retention.*]`` rules that apply to its
  datasets), source, and any transfer outside the EEA with its safeguards
  (Art. 15(2)), as each connector's configuration states them; what the
  configuration does not state, the page says is not stated;
- per dataset its description, every file it was written to (linked), a preview of
  its first rows (bounded: :mod:`jobs.archive.preview`), its columns explained
  where the connector describes them, and charts of its time series (inline SVG,
  :mod:`jobs.archive.charts`) with the number of readings and the period covered;
- the rights to rectification, erasure, restriction, objection and portability and
  how to exercise each; the right to complain to a supervisory authority (the job's
  jurisdiction's authority, else ``HANDOVER_COMPLAINT_AUTHORITY``); automated
  decision-making (Art. 15(1)(h), ``HANDOVER_AUTOMATED_DECISIONS``);
- the authorities the law compelled the controller to disclose the subject's data to, once
  the subject may be told (Art. 15(1)(c), :mod:`jobs.disclosures`);
- every file of the archive, linked, with its size.

Dates, numbers and sizes are written with Babel in the subject's language (the
export's ``locale``: en, fr, nl, de; English otherwise) and the controller's time
zone (``HANDOVER_TIME_ZONE``, named on the page). The texts are the gettext domain
``archive`` in ``jobs/locale`` (``make catalogs`` extracts them from this module and
``templates/export_index.html``).
"""

from __future__ import annotations

import contextlib
import gettext
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from babel import Locale
from babel.dates import format_datetime, format_timedelta
from babel.numbers import format_decimal
from babel.units import format_unit
from markupsafe import Markup

from jobs.archive.charts import line_chart
from jobs.model import Job
from jobs.settings import RecipientConfig, RetentionConfig

DOMAIN = "archive"
LOCALE_DIR = Path(__file__).parent.parent / "locale"
TEMPLATES = Path(__file__).parent / "templates"
_SIZE_UNITS = (
    (1 << 30, "digital-gigabyte"),
    (1 << 20, "digital-megabyte"),
    (1 << 10, "digital-kilobyte"),
)


@dataclass(frozen=True)
class Statement:
    """What the controller states in every archive's index, and how the index is written.

    ``columns`` explains columns per connector and dataset (``{connector: {dataset:
    {column: text}}}``), as the connectors declare them. ``rights_url`` is where the
    subject asks for an erasure or a restriction (``HANDOVER_PRIVACY_URL``, else
    ``HANDOVER_PUBLIC_URL``), if configured. ``recipients`` are those that are not
    connectors (``[recipients.NAME]``, Art. 15(1)(c), 19), listed in a section of their own.
    """

    language: str
    time_zone: str
    controller: str | None = None
    controller_contact: str | None = None
    dpo_contact: str | None = None
    rights_url: str | None = None
    complaint_authority: str | None = None
    complaint_url: str | None = None
    automated_decisions: str | None = None
    retention: tuple[RetentionConfig, ...] = ()
    recipients: tuple[RecipientConfig, ...] = ()
    columns: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The ``archive`` catalog of ``language`` (English is the texts themselves)."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language])


@cache
def _environment(language: str) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    environment.globals["_"] = _page_gettext(translations(language).gettext)
    return environment


def _page_gettext(translate: Callable[[str], str]) -> Callable[..., Markup]:
    """The page's ``_``: what Jinja's newstyle ``_`` gives (the translation, escaped as
    markup, formatted with the variables), each text translated once. Jinja's own goes
    through three of its context calls a text: two fifths of the page's time."""
    translated: dict[str, Markup] = {}

    def page_gettext(message: str, **variables: Any) -> Markup:
        text = translated.get(message)
        if text is None:
            text = translated[message] = Markup(translate(message))
        return text % variables

    return page_gettext


class Writer:
    """Moments, numbers, sizes and durations as ``language`` writes them, in ``zone``."""

    def __init__(self, language: str, zone: str) -> None:
        self.language = language
        self.locale = Locale.parse(language)  # once: babel parses a name at every call
        self.zone = ZoneInfo(zone)

    def moment(self, value: datetime | float) -> str:
        """A moment to the minute: ``4 January 2027, 14:05``, ``4 janv. 2027, 14:05``…"""
        when = datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else value
        return format_datetime(when, "medium", tzinfo=self.zone, locale=self.locale)

    def short_moment(self, value: datetime) -> str:
        """A moment on a chart's axis: ``1/4/27, 2:05 PM``…"""
        return format_datetime(value, "short", tzinfo=self.zone, locale=self.locale)

    def held_moment(self, value: datetime | float, length: str = "medium") -> str:
        """A time held without a zone, written as held (``value``'s wall clock; a number
        is that wall clock counted as if it were UTC), never converted to a zone."""
        wall = datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else value
        return format_datetime(wall.replace(tzinfo=UTC), length, tzinfo=UTC, locale=self.locale)

    def short_held_moment(self, value: datetime) -> str:
        """A time held without a zone on a chart's axis, as held."""
        return self.held_moment(value, "short")

    def number(self, value: float) -> str:
        """``1,234.5``, ``1 234,5``…"""
        return format_decimal(value, locale=self.locale)

    def size(self, count: int) -> str:
        """A size in bytes: ``512 bytes``, ``1.5 MB``, ``2,3 Go``…"""
        for threshold, unit in _SIZE_UNITS:
            if count >= threshold:
                return format_unit(
                    count / threshold, unit, length="short", format="#,##0.#", locale=self.locale
                )
        return format_unit(count, "digital-byte", length="long", locale=self.locale)

    def duration(self, value: timedelta) -> str:
        """``10 years``, ``30 jours``…"""
        return format_timedelta(value, threshold=1.0, locale=self.locale)


def render(
    *,
    job: Job,
    generated_at: datetime,
    expires_at: datetime,
    connectors: Sequence[Mapping[str, Any]],
    files: Sequence[Mapping[str, Any]],
    previews: Mapping[tuple[str, str], Mapping[str, Any]],
    statement: Statement,
    disclosures: Sequence[Mapping[str, str]] = (),
) -> bytes:
    """The page, encoded as UTF-8.

    ``connectors`` are as the manifest lists them (``describe()`` and whether each was
    asked); ``files`` the manifest's data files; ``previews`` each dataset's preview by
    ``(connector, dataset)``; ``disclosures`` the compelled disclosures the subject may be
    told of, as the manifest lists them (Art. 15(1)(c), :mod:`jobs.disclosures`).
    """
    language = statement.language
    write = Writer(language, statement.time_zone)
    _ = translations(language).gettext
    described = statement.columns or {}
    rules: dict[str, dict[str, str | None]] = {
        rule.name: {
            "name": rule.name,
            "anchor": f"retention-{rule.name}",
            "legal_basis": rule.legal_basis,
            "duration": write.duration(rule.duration),
            "covers": rule.dataset or rule.category,
        }
        for rule in statement.retention
    }
    in_scope = set(job.export_options.categories)
    processors: list[dict[str, Any]] = []
    for info in connectors:
        name = str(info["name"])
        not_asked = _not_asked(info, _)
        datasets = []
        applied: dict[str, dict[str, str | None]] = {}
        for dataset in info.get("datasets", []):
            dataset_name = str(dataset["name"])
            for rule in statement.retention:
                if rule.applies_to(name, dataset_name, str(dataset["category"])):
                    applied[rule.name] = rules[rule.name]
            dataset_files = [
                f for f in files if f["connector"] == name and f["dataset"] == dataset_name
            ]
            datasets.append(
                _dataset(
                    dataset,
                    dataset_files,
                    previews.get((name, dataset_name)),
                    described.get(name, {}).get(dataset_name, {}),
                    write,
                    _,
                )
                | {"absent": _absence(not_asked, str(dataset["category"]), in_scope, _)}
            )
        processors.append(
            {
                "name": name,
                "anchor": f"processor-{name}",
                "asked": info.get("asked"),
                "status": info.get("status"),
                "not_asked_reason": info.get("not_asked_reason"),
                "details": {key: info.get(key) for key in _DETAIL_KEYS},
                "rules": list(applied.values()),
                "datasets": datasets,
                "period": info.get("period"),
            }
        )
    page = (
        _environment(language)
        .get_template("export_index.html")
        .render(
            language=language,
            job=job,
            created_at=write.moment(job.created_at),
            generated_at=write.moment(generated_at),
            expires_at=write.moment(expires_at),
            time_zone=statement.time_zone,
            statement=statement,
            scope=job.export_options.scope.model_dump(mode="json"),
            period=_period(job, write),
            identity=job.identity.statement(),
            processors=processors,
            not_asked=[p for p in processors if p["asked"] is False],
            transfers=[p for p in processors if p["details"]["transfer"]],
            rules=list(rules.values()),
            files=[{**f, "size": write.size(int(f["bytes"]))} for f in files],
            total_size=write.size(sum(int(f["bytes"]) for f in files)),
            has_csv=any(f["format"] == "csv" for f in files),
            details=_details(_),
            number=write.number,
            disclosures=[
                {**entry, "day": write.moment(datetime.fromisoformat(entry["disclosed_at"]))}
                for entry in disclosures
            ],
        )
    )
    return page.encode("utf-8")


def _period(job: Job, write: Writer) -> dict[str, str | None] | None:
    """The time range the export asked for, written for people; None: everything."""
    asked = job.export_options.scope.period
    if asked is None:
        return None
    return {
        "since": write.moment(asked.since) if asked.since else None,
        "until": write.moment(asked.until) if asked.until else None,
    }


def _not_asked(info: Mapping[str, Any], _: Callable[[str], str]) -> str | None:
    """Why the processor's answer is not known (None: it was asked and its run succeeded)."""
    status = info.get("status")
    if status == "succeeded":
        return None
    if status == "not_asked":
        return str(info.get("not_asked_reason") or _("no reason recorded"))
    if status == "unidentified":
        return _("it could not be told who you are")
    if status == "failed":
        return _("it could not be reached")
    return _("it has not answered")


def _absence(
    not_asked: str | None, category: str, in_scope: set[str], _: Callable[[str], str]
) -> str:
    """What the page says of a dataset no file holds: nothing found only when the processor
    was asked, its run succeeded and the dataset's category was asked for."""
    if in_scope and category not in in_scope:
        return _("Not part of this export: its category was not asked for.")
    if not_asked is not None:
        return _("Not asked (%(reason)s): this export says nothing about it.") % {
            "reason": not_asked
        }
    return _("Nothing of this kind was found for you.")


_DETAIL_KEYS = ("purposes", "legal_basis", "recipient", "retention", "source", "transfer")


def _details(_: Callable[[str], str]) -> list[tuple[str, str]]:
    """Each Art. 15(1) item a processor's configuration may state, with its label."""
    return [
        ("purposes", _("Purposes")),
        ("legal_basis", _("Legal basis")),
        ("recipient", _("Recipients")),
        ("retention", _("Retention period")),
        ("source", _("Source")),
        ("transfer", _("Transfer outside the EEA")),
    ]


def _dataset(
    dataset: Mapping[str, Any],
    files: Sequence[Mapping[str, Any]],
    preview: Mapping[str, Any] | None,
    described: Mapping[str, str],
    write: Writer,
    _: Callable[[str], str],
) -> dict[str, Any]:
    """One dataset as the page shows it: files, preview table, columns explained, charts."""
    records = files[0]["records"] if files else 0
    columns = list(preview["columns"]) if preview else []
    series = preview.get("series") if preview else None
    time_column = series["time"] if series else None
    return {
        "name": dataset["name"],
        "category": dataset["category"],
        "description": dataset.get("description") or "",
        "records": records,
        "files": [{**f, "size": write.size(int(f["bytes"]))} for f in files],
        "columns": columns,
        "rows": [
            [
                _cell(text, column == time_column, write)
                for column, text in zip(columns, row, strict=True)
            ]
            for row in (preview["rows"] if preview else [])
        ],
        "columns_left_out": preview["columns_left_out"] if preview else 0,
        "explained": [(c, described[c]) for c in columns if c in described],
        "series": _series(series, write, _),
    }


_ISO_MOMENT = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def _cell(text: str, is_time: bool, write: Writer) -> dict[str, str | None]:
    """A preview cell: its text, or a moment written for people, with the value as held.

    A moment is a series' time column (Unix seconds), or text in ISO 8601 with a time
    of day; ``iso`` is the moment in ISO 8601 (for ``<time datetime>``). A moment held
    without a zone is written as held, not converted into the reader's zone.
    """
    when: datetime | None = None
    if is_time:
        with contextlib.suppress(ValueError, OverflowError, OSError):
            when = datetime.fromtimestamp(float(text), UTC)
    if when is None and _ISO_MOMENT.match(text):
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(text)
    if when is None:
        return {"text": text, "held": None, "iso": None}
    written = write.moment(when) if when.tzinfo else write.held_moment(when)
    return {"text": written, "held": text, "iso": when.isoformat()}


def _series(
    series: Mapping[str, Any] | None, write: Writer, _: Callable[[str], str]
) -> dict[str, Any] | None:
    """The dataset's charts: one per series and value, with readings and period."""
    if not series:
        return None
    charts = []
    for chart in series["charts"]:
        naive = bool(chart.get("naive"))
        moment = write.held_moment if naive else write.moment
        axis = _("time as held, zone unknown") if naive else None
        first, last = (_seconds(chart[end]) for end in ("first", "last"))
        for position, value in enumerate(series["values"], start=1):
            label = (
                _("%(value)s of %(key)s") % {"value": value, "key": chart["key"]}
                if chart["key"] is not None
                else str(value)
            )
            points = [
                (when, point[position])
                for point in chart["points"]
                if (when := _when(point[0])) is not None
            ]
            charts.append(
                {
                    "label": label,
                    "svg": line_chart(
                        label,
                        points,
                        write.short_held_moment if naive else write.short_moment,
                        write.number,
                        time_label=axis,
                    )
                    if points
                    else None,
                    "naive": naive,
                    "readings": write.number(chart["readings"]),
                    "first": moment(first) if first is not None and last is not None else None,
                    "last": moment(last) if first is not None and last is not None else None,
                    "stride": chart["stride"],
                    "shown": write.number(len(points)),
                    "undated": write.number(chart["undated"]),
                }
            )
    return {
        "by": series["by"],
        "charts": charts,
        "not_charted": write.number(series["readings_not_charted"])
        if series["readings_not_charted"]
        else None,
    }


def _when(seconds: float) -> datetime | None:
    """A point's moment; None for one no ``datetime`` can hold (a preview gathered by an
    earlier version may hold epoch milliseconds)."""
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _seconds(value: float | None) -> float | None:
    """``value`` if it is a moment a ``datetime`` can hold, else None."""
    return value if value is not None and _when(value) is not None else None


__all__ = ["DOMAIN", "Statement", "Writer", "render", "translations"]
