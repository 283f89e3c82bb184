"""The request lifecycle the law sets: jurisdiction profiles, due dates, extensions, refusals.

A :class:`Jurisdiction` says how long the controller has to answer, by how much and
until when that may be extended, when the request must be acknowledged, whether
asking the subject for information stops the clock, which days are not working
days, and where a refused subject may complain. Built in (:data:`BUILT_IN`),
each overridable and joined by more through ``[jurisdictions.NAME]`` tables in
``HANDOVER_CONFIG`` (:func:`configured`):

============  ========  ==============  ==================  ===========  ========
profile       period    extension       announced within    acknowledge  pauses
============  ========  ==============  ==================  ===========  ========
``gdpr``      1 month   2 months        the first period    —            yes
``uk_gdpr``   1 month   2 months        the first period    —            yes
``ccpa``      45 days   45 days, once   the first period    10 business  no
``lgpd``      15 days   none            —                   —            no
============  ========  ==============  ==================  ===========  ========

References: GDPR Art. 12(3) (one month, extendable by two further months, the
subject told of the extension and its reasons within the first month), 12(4)
(a refusal told without delay, with the reasons and the right to complain to a
supervisory authority and to a judicial remedy), 12(5) (manifestly unfounded or
excessive requests), 12(6) (information to confirm identity); EDPB Guidelines
01/2022 on the right of access, which read the month by Regulation (EEC, Euratom)
No 1182/71 and let the period start once the information asked for to identify
the subject is received (Handover applies the stricter reading below: the period
is suspended while the request waits, not restarted); UK GDPR Art. 12 and the
ICO's guidance (the same computation); CCPA/CPRA, Cal. Civ. Code
§ 1798.130(a)(2) and 11 CCR § 7021 (acknowledge within 10 business days, answer
within 45 calendar days, extendable once by 45 with notice); LGPD Art. 19 II (a
complete answer within 15 days).

How a due date is computed (:meth:`Jurisdiction.due_at`), in the controller's time
zone (``HANDOVER_TIME_ZONE``): the day of receipt does not count; a period of
months ends on the same date of the last month, or on that month's last day when
it has no such date (31 January + 1 month = 28 or 29 February); a period of days
ends that many calendar days later; business days skip weekends and the profile's
holidays. When the profile says so (Reg. 1182/71 Art. 3(4)), a period ending on a
Saturday, Sunday or public holiday ends at the end of the next working day. It
ends at the end of that day (23:59:59.999 local time), returned in UTC. An
extension lengthens the period counted from receipt (GDPR: three months in all).
Time the clock was paused waiting for the subject's information moves the start
of the period by as much (the pauses' lengths added up): the period is suspended
while the request waits and runs on from where it stood, it does not start again
when the answer comes. That is the cautious reading: the wait is never longer than
the time from receipt to the answer, so the due date is never later than a period
started afresh on the answer would give, and the days that ran before the question
stay spent.

Holidays: a profile's ``calendar`` (``BE``, Belgium's ten statutory public
holidays, computed for any year; or ``none``) plus its ``holidays``, a list of
dates. ``gdpr`` ships with ``BE``: the reference platform's controller is Belgian
(change it for another member state). Every other built-in ships with ``none`` and
counts weekends only, so its deadlines fall no later than the law's; list your
public holidays in its table to use them.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from jobs.model import InvalidRequest

END_OF_DAY = time(23, 59, 59, 999000)
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class Unit(StrEnum):
    """What a span counts."""

    MONTHS = "months"
    DAYS = "days"
    BUSINESS_DAYS = "business days"


_SPAN = re.compile(r"(\d{1,4})\s+(months?|days?|business\s+days?)")


@dataclass(frozen=True)
class Span:
    """A length of time as the law writes it: ``1 month``, ``45 days``, ``10 business days``."""

    count: int
    unit: Unit

    @classmethod
    def parse(cls, text: object) -> Span:
        """``"2 months"``, ``"45 days"``, ``"10 business days"``; ValueError for anything else."""
        found = _SPAN.fullmatch(str(text).strip().lower()) if isinstance(text, str) else None
        if found is None:
            raise ValueError(
                f"expected a span such as 1 month, 45 days or 10 business days, got {text!r}"
            )
        count, word = int(found[1]), " ".join(found[2].split())
        unit = Unit.MONTHS if word.startswith("month") else Unit.DAYS
        if word.startswith("business"):
            unit = Unit.BUSINESS_DAYS
        if count < 1:
            raise ValueError(f"a span is at least 1 {unit.value[:-1]}, got {text!r}")
        return cls(count, unit)

    def __str__(self) -> str:
        return f"{self.count} {self.unit.value[:-1] if self.count == 1 else self.unit.value}"


class RefusalGrounds(StrEnum):
    """Why a request may be refused (GDPR Art. 12(5), 12(2), 15(4), 23; CCPA § 7022, 7024)."""

    MANIFESTLY_UNFOUNDED = "manifestly_unfounded"
    EXCESSIVE = "excessive"
    IDENTITY_NOT_ESTABLISHED = "identity_not_established"
    RIGHTS_OF_OTHERS = "rights_of_others"
    LEGAL_EXEMPTION = "legal_exemption"


class NotAllowed(Exception):
    """What was asked is not allowed now, by the jurisdiction's rules or the lifecycle's.

    ``rule`` names the rule, a slug (``extension-too-late``); the API answers 409 with it.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def easter(year: int) -> date:
    """Easter Sunday of ``year`` (Gregorian; the anonymous algorithm, Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    weekday = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 19 * weekday) // 433
    month = (h + weekday - 7 * m + 90) // 25
    return date(year, month, (h + weekday - 7 * m + 33 * month + 19) % 32)


@lru_cache(maxsize=64)
def _belgian_holidays(year: int) -> frozenset[date]:
    """Belgium's ten statutory public holidays (Royal Decree of 18 April 1974)."""
    sunday = easter(year)
    fixed = [(1, 1), (5, 1), (7, 21), (8, 15), (11, 1), (11, 11), (12, 25)]
    moving = [sunday + timedelta(days=n) for n in (1, 39, 50)]  # Easter Monday, Ascension, Whit
    return frozenset([date(year, month, day) for month, day in fixed] + moving)


def _no_holidays(year: int) -> frozenset[date]:
    return frozenset()


CALENDARS: dict[str, Callable[[int], frozenset[date]]] = {
    "BE": _belgian_holidays,
    "none": _no_holidays,
}
"""Built-in holiday calendars: each gives a year's public holidays."""


@dataclass(frozen=True)
class Jurisdiction:
    """One law's deadlines and rules for a data subject's request."""

    name: str
    label: str
    period: Span
    extension: Span | None = None
    #: Until when an extension may be announced, counted from receipt; None: the first period.
    extension_notice: Span | None = None
    extend_once: bool = False
    acknowledge_within: Span | None = None
    pauses_for_information: bool = False
    next_working_day: bool = False
    calendar: str = "none"
    holidays: frozenset[date] = frozenset()
    authority: str | None = None
    authority_url: str | None = None

    def is_working_day(self, day: date) -> bool:
        """Not a Saturday, a Sunday or one of the profile's holidays."""
        return (
            day.weekday() < 5
            and day not in self.holidays
            and day not in CALENDARS[self.calendar](day.year)
        )

    def ends(self, received: datetime, span: Span, zone: ZoneInfo, *, roll: bool) -> datetime:
        """The end of ``span`` from ``received`` (see the module's docstring), in UTC."""
        day = received.astimezone(zone).date()
        if span.unit is Unit.MONTHS:
            months = day.month - 1 + span.count
            year, month = day.year + months // 12, months % 12 + 1
            day = date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
        elif span.unit is Unit.DAYS:
            day += timedelta(days=span.count)
        else:
            for _ in range(span.count):
                day += timedelta(days=1)
                while not self.is_working_day(day):
                    day += timedelta(days=1)
        while roll and not self.is_working_day(day):
            day += timedelta(days=1)
        return datetime.combine(day, END_OF_DAY, tzinfo=zone).astimezone(UTC)

    def due_at(
        self,
        received: datetime,
        zone: ZoneInfo,
        *,
        extended: int = 0,
        paused: timedelta = timedelta(0),
    ) -> datetime:
        """When the answer is due: the period, plus ``extended`` (in the extension's unit).

        ``paused``, the time the clock stood still, moves the start of the period by as
        much: a suspension, not a restart (see the module docstring).
        """
        period = Span(self.period.count + extended, self.period.unit)
        return self.ends(received + paused, period, zone, roll=self.next_working_day)

    def extendable_until(
        self, received: datetime, zone: ZoneInfo, paused: timedelta = timedelta(0)
    ) -> datetime | None:
        """The last moment an extension may be announced; None when the law allows none."""
        if self.extension is None:
            return None
        notice = self.extension_notice or self.period
        return self.ends(received + paused, notice, zone, roll=self.next_working_day)

    def acknowledge_by(self, received: datetime, zone: ZoneInfo) -> datetime | None:
        """When the request must have been acknowledged; None when the law sets no time."""
        if self.acknowledge_within is None:
            return None
        return self.ends(received, self.acknowledge_within, zone, roll=self.next_working_day)

    def check_extension(
        self,
        *,
        by: int,
        used: int,
        received: datetime,
        paused: timedelta,
        zone: ZoneInfo,
        now: datetime,
    ) -> None:
        """Refuse an extension the law does not allow now (:class:`NotAllowed`), or one too long.

        Checked in this order: the law allows none; it allows one and one was made; the
        window to announce one has closed; ``by`` on top of ``used`` exceeds the maximum.
        """
        if self.extension is None:
            raise NotAllowed(
                "extension-not-allowed", f"{self.label} provides for no extension of the deadline"
            )
        if self.extend_once and used:
            raise NotAllowed(
                "extension-already-made",
                f"{self.label} allows one extension of the deadline, and it was made",
            )
        until = self.extendable_until(received, zone, paused)
        if until is not None and now > until:
            window = self.extension_notice or self.period
            ended = until.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            raise NotAllowed(
                "extension-too-late",
                f"{self.label}: an extension must be announced to the subject within {window} "
                f"of receipt (the first period), which ended {ended}",
            )
        unit = self.extension.unit.value
        if used + by > self.extension.count:
            raise InvalidRequest(
                unit.replace(" ", "_"),
                f"the deadline may be extended by {self.extension.count} {unit} in all; "
                f"{used} already used",
            )


BUILT_IN: tuple[Jurisdiction, ...] = (
    Jurisdiction(
        name="gdpr",
        label="GDPR",
        period=Span(1, Unit.MONTHS),
        extension=Span(2, Unit.MONTHS),
        pauses_for_information=True,
        next_working_day=True,
        calendar="BE",
    ),
    Jurisdiction(
        name="uk_gdpr",
        label="UK GDPR",
        period=Span(1, Unit.MONTHS),
        extension=Span(2, Unit.MONTHS),
        pauses_for_information=True,
        next_working_day=True,
        authority="Information Commissioner's Office (ICO)",
        authority_url="https://ico.org.uk/make-a-complaint/",
    ),
    Jurisdiction(
        name="ccpa",
        label="CCPA/CPRA",
        period=Span(45, Unit.DAYS),
        extension=Span(45, Unit.DAYS),
        extend_once=True,
        acknowledge_within=Span(10, Unit.BUSINESS_DAYS),
        authority="California Privacy Protection Agency",
        authority_url="https://cppa.ca.gov/",
    ),
    Jurisdiction(
        name="lgpd",
        label="LGPD",
        period=Span(15, Unit.DAYS),
        extension=None,
        authority="Autoridade Nacional de Proteção de Dados (ANPD)",
        authority_url="https://www.gov.br/anpd/",
    ),
)
"""The profiles Handover knows without configuration."""

_KEYS = frozenset(
    {
        "label",
        "period",
        "extension",
        "extension_notice",
        "extend_once",
        "acknowledge_within",
        "pauses_for_information",
        "next_working_day",
        "calendar",
        "holidays",
        "authority",
        "authority_url",
    }
)


def configured(tables: Mapping[str, Any]) -> tuple[Jurisdiction, ...]:
    """The built-in profiles, overridden and joined by ``[jurisdictions.NAME]`` tables.

    A table for a built-in name changes only the keys it sets; a new name needs at
    least ``period``. Raises ValueError naming the table and the key that is wrong.
    """
    profiles = {profile.name: profile for profile in BUILT_IN}
    for name, table in tables.items():
        where = f"[jurisdictions.{name}]"
        if not NAME.fullmatch(name):
            raise ValueError(f"{where}: a name is lowercase letters, digits, - or _")
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
        base = profiles.get(name)
        if base is None and "period" not in table:
            raise ValueError(f'{where} needs a period (e.g. period = "1 month")')
        try:
            profiles[name] = _profile(name, table, base)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(profiles.values())


def _profile(name: str, table: Mapping[str, Any], base: Jurisdiction | None) -> Jurisdiction:
    values: dict[str, Any] = {}
    for key, value in table.items():
        values[key] = _value(key, value)
    profile = (
        replace(base, **values)
        if base is not None
        else Jurisdiction(name=name, label=values.pop("label", name), **values)
    )
    if profile.period.unit is Unit.BUSINESS_DAYS:
        raise ValueError("period: counted in months or days")
    if profile.extension is not None and profile.extension.unit is not profile.period.unit:
        raise ValueError(f"extension: counted in {profile.period.unit.value}, like the period")
    return profile


def _value(key: str, value: object) -> object:
    if key in {"extend_once", "pauses_for_information", "next_working_day"}:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if key == "period":
        return Span.parse(value)
    if key in {"extension", "extension_notice", "acknowledge_within"}:
        return None if value in {"", "none"} else Span.parse(value)
    if key == "calendar":
        if value not in CALENDARS:
            raise ValueError(f"calendar: expected one of {', '.join(CALENDARS)}, got {value!r}")
        return value
    if key == "holidays":
        return frozenset(_dates(value))
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}: expected text, got {value!r}")
    if key == "authority_url" and not value.startswith(("https://", "http://")):
        raise ValueError(f"authority_url: expected an http(s) URL, got {value!r}")
    return value.strip()


def _dates(value: object) -> Iterable[date]:
    if not isinstance(value, list):
        raise ValueError('holidays: expected a list of dates, e.g. ["2027-05-08"]')
    for item in value:
        if isinstance(item, date) and not isinstance(item, datetime):
            yield item
            continue
        try:
            yield date.fromisoformat(str(item))
        except ValueError:
            raise ValueError(f"holidays: {item!r} is not a date (YYYY-MM-DD)") from None


def find(profiles: Iterable[Jurisdiction], name: str) -> Jurisdiction:
    """The profile called ``name``; :class:`InvalidRequest` naming the known ones otherwise."""
    known = {profile.name: profile for profile in profiles}
    if name not in known:
        raise InvalidRequest(
            "jurisdiction", f"unknown jurisdiction {name!r}; known: {', '.join(sorted(known))}"
        )
    return known[name]


__all__ = [
    "BUILT_IN",
    "Jurisdiction",
    "NotAllowed",
    "RefusalGrounds",
    "Span",
    "Unit",
    "configured",
    "find",
]
