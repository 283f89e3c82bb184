"""Jurisdiction profiles compute the law's dates: a table of month ends, leap years,
weekends, holidays and time zones, and the profiles as ``HANDOVER_CONFIG`` changes them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from jobs.lifecycle import BUILT_IN, NotAllowed, Span, Unit, easter
from jobs.model import InvalidRequest
from jobs.settings import Settings, SettingsError

PROFILES = {profile.name: profile for profile in BUILT_IN}
UTC_ZONE = ZoneInfo("UTC")
BRUSSELS = ZoneInfo("Europe/Brussels")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def end_of(day: str, zone: ZoneInfo) -> datetime:
    """The last millisecond of ``day`` in ``zone``, in UTC."""
    local = datetime.combine(date.fromisoformat(day), time(23, 59, 59, 999000), tzinfo=zone)
    return local.astimezone(UTC)


# profile, zone, received (UTC), due (a day in the zone), why
DUE = [
    ("gdpr", UTC_ZONE, "2026-12-02 10:00", "2027-01-04", "2 Jan 2027 is a Saturday"),
    ("gdpr", UTC_ZONE, "2026-12-01 10:00", "2027-01-04", "1 Jan a holiday, then a weekend"),
    ("gdpr", UTC_ZONE, "2027-01-31 09:00", "2027-03-01", "31 Jan → 28 Feb 2027, a Sunday"),
    ("gdpr", UTC_ZONE, "2028-01-31 09:00", "2028-02-29", "leap year: 29 Feb 2028, a Tuesday"),
    ("gdpr", UTC_ZONE, "2028-02-29 09:00", "2028-03-29", "from a 29 February"),
    ("gdpr", UTC_ZONE, "2026-01-30 09:00", "2026-03-02", "30 Jan → 28 Feb 2026, a Saturday"),
    ("gdpr", UTC_ZONE, "2027-03-31 09:00", "2027-04-30", "31 Mar → 30 Apr: no 31 April"),
    ("gdpr", UTC_ZONE, "2027-06-21 09:00", "2027-07-22", "21 Jul: Belgian National Day"),
    ("uk_gdpr", UTC_ZONE, "2027-06-21 09:00", "2027-07-21", "no Belgian holidays in the UK"),
    ("gdpr", UTC_ZONE, "2026-10-11 09:00", "2026-11-12", "11 Nov: Armistice Day"),
    ("gdpr", UTC_ZONE, "2028-03-17 09:00", "2028-04-18", "17 Apr 2028: Easter Monday"),
    ("gdpr", UTC_ZONE, "2027-04-06 09:00", "2027-05-07", "6 May 2027: Ascension"),
    ("gdpr", UTC_ZONE, "2027-04-17 09:00", "2027-05-18", "17 May 2027: Whit Monday"),
    ("gdpr", UTC_ZONE, "2027-11-25 09:00", "2027-12-27", "25 Dec a Saturday; 26 Dec none"),
    ("gdpr", UTC_ZONE, "2027-03-14 23:30", "2027-04-14", "14 March in UTC"),
    ("gdpr", BRUSSELS, "2027-03-14 23:30", "2027-04-15", "already 15 March in Brussels"),
    ("gdpr", BRUSSELS, "2026-12-01 23:30", "2027-01-04", "received 2 Dec in Brussels"),
    ("ccpa", UTC_ZONE, "2026-12-02 10:00", "2027-01-16", "45 calendar days, a Saturday"),
    ("ccpa", LOS_ANGELES, "2027-01-05 03:00", "2027-02-18", "4 January in California"),
    ("lgpd", UTC_ZONE, "2026-12-02 10:00", "2026-12-17", "15 days"),
]


@pytest.mark.parametrize(("name", "zone", "received", "due", "why"), DUE, ids=[r[4] for r in DUE])
def test_due_dates_follow_the_profile(
    name: str, zone: ZoneInfo, received: str, due: str, why: str
) -> None:
    assert PROFILES[name].due_at(moment(received), zone) == end_of(due, zone), why


def test_the_end_of_a_brussels_day_moves_with_daylight_saving() -> None:
    winter = PROFILES["gdpr"].due_at(moment("2026-12-02 10:00"), BRUSSELS)
    summer = PROFILES["gdpr"].due_at(moment("2027-03-14 23:30"), BRUSSELS)
    assert winter == datetime(2027, 1, 4, 22, 59, 59, 999000, tzinfo=UTC)  # CET, UTC+1
    assert summer == datetime(2027, 4, 15, 21, 59, 59, 999000, tzinfo=UTC)  # CEST, UTC+2


# profile, received, extended by, paused, due, why
LONGER = [
    ("gdpr", "2026-12-02 10:00", 2, timedelta(0), "2027-03-02", "three months from receipt"),
    ("gdpr", "2027-01-31 10:00", 2, timedelta(0), "2027-04-30", "31 Jan + 3 months"),
    ("gdpr", "2026-12-02 10:00", 0, timedelta(days=3), "2027-01-05", "paused 3 days"),
    ("gdpr", "2026-12-02 10:00", 0, timedelta(hours=5), "2027-01-04", "paused within a day"),
    ("ccpa", "2026-12-02 10:00", 45, timedelta(0), "2027-03-02", "90 days in all"),
]


@pytest.mark.parametrize(
    ("name", "received", "extended", "paused", "due", "why"), LONGER, ids=[r[5] for r in LONGER]
)
def test_extensions_and_pauses_lengthen_the_period_from_receipt(
    name: str, received: str, extended: int, paused: timedelta, due: str, why: str
) -> None:
    profile = PROFILES[name]
    assert profile.due_at(moment(received), UTC_ZONE, extended=extended, paused=paused) == end_of(
        due, UTC_ZONE
    ), why


def test_acknowledgement_deadlines_count_business_days() -> None:
    received = moment("2026-12-02 10:00")  # a Wednesday
    assert PROFILES["ccpa"].acknowledge_by(received, UTC_ZONE) == end_of("2026-12-16", UTC_ZONE)
    friday = moment("2026-12-18 10:00")  # 25 Dec is no holiday of the ccpa profile's calendar
    assert PROFILES["ccpa"].acknowledge_by(friday, UTC_ZONE) == end_of("2027-01-01", UTC_ZONE)
    assert PROFILES["gdpr"].acknowledge_by(received, UTC_ZONE) is None


def test_easter_and_the_belgian_holidays() -> None:
    assert [easter(year) for year in (2026, 2027, 2028)] == [
        date(2026, 4, 5),
        date(2027, 3, 28),
        date(2028, 4, 16),
    ]
    gdpr = PROFILES["gdpr"]
    off = [
        day for day in (date(2027, 1, 1) + timedelta(n) for n in range(365)) if day.weekday() < 5
    ]
    holidays = [day for day in off if not gdpr.is_working_day(day)]
    assert [day.isoformat() for day in holidays] == [
        "2027-01-01",  # New Year, a Friday
        "2027-03-29",  # Easter Monday
        "2027-05-06",  # Ascension
        "2027-05-17",  # Whit Monday
        "2027-07-21",  # National Day
        "2027-11-01",  # All Saints
        "2027-11-11",  # Armistice
    ]  # 1 May and 15 August fall on a Saturday and a Sunday, Christmas on a Saturday


def check_extension(
    name: str, *, by: int, used: int, now: str, paused: timedelta = timedelta(0)
) -> None:
    """Whether ``name`` allows extending a request received 2 Dec 2026 10:00 UTC, ``now``."""
    PROFILES[name].check_extension(
        by=by,
        used=used,
        received=moment("2026-12-02 10:00"),
        paused=paused,
        zone=UTC_ZONE,
        now=moment(now),
    )


def test_extensions_are_refused_by_the_rule_that_forbids_them() -> None:
    check_extension("gdpr", by=2, used=0, now="2027-01-04 23:00")
    with pytest.raises(NotAllowed) as late:
        check_extension("gdpr", by=1, used=0, now="2027-01-05 00:00")
    assert late.value.rule == "extension-too-late"
    assert str(late.value) == (
        "GDPR: an extension must be announced to the subject within 1 month of receipt "
        "(the first period), which ended 2027-01-04T23:59:59.999Z"
    )
    # Paused three days: the window stays open three days longer.
    check_extension("gdpr", by=1, used=0, now="2027-01-05 12:00", paused=timedelta(days=3))
    with pytest.raises(InvalidRequest, match="2 months in all; 1 already used"):
        check_extension("gdpr", by=2, used=1, now="2026-12-10 00:00")
    with pytest.raises(NotAllowed) as once:
        check_extension("ccpa", by=5, used=40, now="2026-12-10 00:00")
    assert once.value.rule == "extension-already-made"
    with pytest.raises(NotAllowed) as none:
        check_extension("lgpd", by=1, used=0, now="2026-12-03 00:00")
    assert none.value.rule == "extension-not-allowed"


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("1 month", Span(1, Unit.MONTHS)),
        ("2 Months", Span(2, Unit.MONTHS)),
        ("45 days", Span(45, Unit.DAYS)),
        ("10 business  days", Span(10, Unit.BUSINESS_DAYS)),
    ],
)
def test_spans_read_as_the_law_writes_them(text: str, span: Span) -> None:
    assert Span.parse(text) == span


@pytest.fixture
def config(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    def write(text: str) -> dict[str, str]:
        path = tmp_path / "handover.toml"
        path.write_text(text)
        return {"HANDOVER_CONFIG": str(path)}

    return write


def test_profiles_are_changed_and_added_by_configuration(
    config: Callable[[str], dict[str, str]],
) -> None:
    settings = Settings.load(
        {
            **config(
                """
[jurisdictions.gdpr]
holidays = ["2027-01-04", "2027-01-05"]

[jurisdictions.fr]
label = "GDPR (France)"
period = "1 month"
extension = "2 months"
next_working_day = true
pauses_for_information = true
holidays = [2027-01-04]
authority = "CNIL"
authority_url = "https://www.cnil.fr/fr/plaintes"
"""
            ),
            "HANDOVER_JURISDICTION": "fr",
            "HANDOVER_TIME_ZONE": "Europe/Paris",
        }
    )
    received = moment("2026-12-02 10:00")
    gdpr = settings.profile("gdpr")
    assert gdpr.calendar == "BE" and gdpr.label == "GDPR"  # only what the table sets changes
    assert gdpr.due_at(received, settings.zone) == end_of("2027-01-06", ZoneInfo("Europe/Paris"))
    france = settings.profile()
    assert (france.name, france.authority, france.calendar) == ("fr", "CNIL", "none")
    assert france.due_at(received, settings.zone) == end_of("2027-01-05", ZoneInfo("Europe/Paris"))
    assert settings.profile("ccpa").period == Span(45, Unit.DAYS)  # the others stay


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("", {"HANDOVER_JURISDICTION": "mars"}, "HANDOVER_JURISDICTION: unknown jurisdiction"),
        ("", {"HANDOVER_TIME_ZONE": "Mars/Olympus"}, "HANDOVER_TIME_ZONE: unknown time zone"),
        ("[jurisdictions.x]\nlabel = 'X'\n", {}, "[jurisdictions.x] needs a period"),
        ("[jurisdictions.gdpr]\nperiod = 'a fortnight'\n", {}, "expected a span"),
        ("[jurisdictions.gdpr]\nholidays = ['someday']\n", {}, "'someday' is not a date"),
        ("[jurisdictions.gdpr]\ncalendar = 'FR'\n", {}, "calendar: expected one of BE, none"),
        ("[jurisdictions.gdpr]\ncolour = 'blue'\n", {}, "unknown key(s) colour"),
        ("[jurisdictions.gdpr]\nextension = '30 days'\n", {}, "counted in months, like"),
        (
            "",
            {"HANDOVER_COMPLAINT_AUTHORITY": ""},
            "HANDOVER_COMPLAINT_AUTHORITY: needed: gdpr names no authority",
        ),
    ],
)
def test_bad_profiles_stop_the_process_with_one_line(
    config: Callable[[str], dict[str, str]], toml: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.load({**config(toml), **environ})
    assert message in str(error.value)
    assert "\n" not in str(error.value)
