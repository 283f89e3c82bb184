"""What a connector is asked about (``Subject``) and what it answers with (items)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
"""What a connector's or a dataset's name may be: it becomes part of archive paths
(``<connector>/<dataset>.json``) and of retention rules (``connector/dataset``), so no
``/``, ``.``, ``\\`` or anything else a path could be made of."""


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid connector or dataset name (:data:`NAME`); else ValueError."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} must be 1 to 63 letters, digits, - or _, "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Period:
    """The time range an export asks for: from ``since`` (included) to ``until`` (excluded).

    Either end may be open (``None``); both are timezone-aware. A connector applies it
    to the datasets it declares ``by_period`` and exports the others whole; the
    archive's manifest says which is which, so a range is never claimed where it was
    not applied.
    """

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                raise ValueError(f"{name} must carry a time zone")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must come before until")

    @property
    def bounds(self) -> frozenset[str]:
        """The ends the range sets (``since``, ``until``): those not open."""
        return frozenset(
            name for name, moment in (("since", self.since), ("until", self.until)) if moment
        )

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` (timezone-aware) falls in the range."""
        return (self.since is None or moment >= self.since) and (
            self.until is None or moment < self.until
        )

    def statement(self) -> dict[str, str | None]:
        """The range as signed documents state it: ISO 8601 in UTC, ``None`` for an open end."""
        return {
            name: None if moment is None else _utc(moment)
            for name, moment in (("since", self.since), ("until", self.until))
        }


def _utc(moment: datetime) -> str:
    """``2026-11-01T00:00:00Z``: a moment in UTC, ISO 8601."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Subject:
    """The person a request is about.

    ``id`` is the platform's user id (the token's ``sub``); ``email`` and the further
    ``identities`` (e.g. ``{"hubspot_contact_id": "901"}``, ``{"phone_number": …}``)
    help processors that key their data differently. Handover resolves them before
    any processor runs (verified token claims, identifiers staff supplied with how
    they were verified, identity-source connectors) and hands every connector all of
    them; a connector that finds none of the identifiers it declares raises
    :class:`~connectors.errors.Unidentified`. ``period``, on an export that asks for
    one, is the time range to apply to the datasets declared ``by_period``.
    """

    id: str
    email: str | None = None
    identities: Mapping[str, str] = field(default_factory=dict)
    period: Period | None = None

    def identifier(self, name: str) -> str | None:
        """The identifier called ``name`` (``id``, ``email`` or an identity), if known."""
        if name == "id":
            return self.id
        if name == "email":
            return self.email
        return self.identities.get(name)


@dataclass(frozen=True, slots=True)
class Series:
    """How a dataset's rows make numeric time series, for the archive to chart.

    ``time`` is the column holding each reading's moment (Unix seconds, or ISO 8601
    text), ``values`` the numeric columns measured at that moment, and ``by`` the
    column whose value tells one series from another (a device's id), if any:
    each distinct value of ``by`` gets its own chart.
    """

    time: str
    values: tuple[str, ...]
    by: str | None = None

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a series needs at least one value column")


@dataclass(frozen=True, slots=True)
class Dataset:
    """A kind of record a connector holds, declared up front.

    ``category`` is the GDPR category of personal data (identification, contact,
    economic, device, telemetry, usage, cookies, ...). ``fields`` fixes the column
    order of the CSV rendering; when empty, the first record's keys are used.
    ``notice`` marks a dataset that is a statement about the processing rather than
    data held on the subject (e.g. "this processor offers no per-user export"): it
    is exported for everyone and is not something an erasure removes.
    ``column_descriptions`` explains columns to the subject (by column name), and
    ``series`` says how the rows chart as time series; the archive's ``index.html``
    shows both. ``by_period`` declares that the connector applies an export's
    :class:`Period` (``Subject.period``) to this dataset's rows; ``period_bounds``,
    which ends of it (``since``, ``until``; both unless said). A dataset without it, or
    asked for an end it cannot apply, is exported whole, and the manifest says so
    (:meth:`applies`).

    ``name`` must match :data:`NAME` (it names the dataset's file in the archive):
    a declaration with any other name raises :class:`ValueError`.
    """

    name: str
    category: str
    description: str = ""
    fields: tuple[str, ...] = ()
    notice: bool = False
    column_descriptions: Mapping[str, str] = field(default_factory=dict, hash=False)
    series: Series | None = None
    by_period: bool = False
    period_bounds: frozenset[str] = frozenset({"since", "until"})

    def __post_init__(self) -> None:
        check_name("dataset", self.name)

    def applies(self, period: Period) -> bool:
        """Whether the connector limits this dataset to ``period``: every end it sets."""
        return self.by_period and period.bounds <= self.period_bounds


@dataclass(frozen=True, slots=True)
class Record:
    """One record of ``dataset`` held on the subject: a JSON-serialisable mapping."""

    dataset: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Records:
    """Many records of ``dataset`` at once, in order: a batch, as a cursor or a page holds them.

    What :meth:`~connectors.base.Connector.export_batches` yields: each row is what a
    :class:`Record`'s ``data`` would be. Handover encodes a batch in one go, so a page
    of rows costs far less than the same rows one :class:`Record` at a time. Give a
    batch a page's worth of rows (hundreds to thousands); Handover never holds more
    than a few batches at once.
    """

    dataset: str
    rows: Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class File:
    """A binary file held on the subject (an upload, an image).

    It lands in the archive at ``<connector>/files/<path>``; ``content`` is the whole
    body or an async stream of chunks, so large files never sit whole in memory.
    """

    path: str
    content: bytes | AsyncIterable[bytes]
    media_type: str = "application/octet-stream"
    dataset: str = "files"


Item = Record | File
"""What :meth:`~connectors.base.Connector.export` yields, one at a time."""

Batch = Records | File
"""What :meth:`~connectors.base.Connector.export_batches` yields."""
