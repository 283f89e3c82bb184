"""ULID job ids: the spec's vector, time order and shape."""

from __future__ import annotations

import time

import pytest

from jobs.ids import is_ulid, new_ulid

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def timestamp_of(ulid: str) -> int:
    value = 0
    for char in ulid[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_known_time_vector() -> None:
    assert new_ulid(1469918176385)[:10] == "01ARYZ6S41"


def test_time_prefix_decodes_back() -> None:
    for ms in (0, 1, 1469918176385, 2**48 - 1):
        assert timestamp_of(new_ulid(ms)) == ms


def test_ids_of_later_milliseconds_sort_after() -> None:
    start = 1_700_000_000_000
    ids = [new_ulid(start + step) for step in range(0, 2000, 7)]

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_of_the_same_millisecond_differ() -> None:
    ids = {new_ulid(1_700_000_000_000) for _ in range(1000)}
    assert len(ids) == 1000


def test_default_time_is_now() -> None:
    before = int(time.time() * 1000)
    ulid = new_ulid()
    after = int(time.time() * 1000)

    assert before <= timestamp_of(ulid) <= after


def test_generated_ids_are_ulids() -> None:
    for _ in range(100):
        ulid = new_ulid()
        assert len(ulid) == 26
        assert is_ulid(ulid)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "01ARYZ6S41",
        "01ARYZ6S41TSV4RRFFQ69G5FA",  # 25 characters
        "01ARYZ6S41TSV4RRFFQ69G5FAVX",  # 27 characters
        "01ARYZ6S41TSV4RRFFQ69G5FAI",  # I is not Crockford base32
        "01ARYZ6S41TSV4RRFFQ69G5FAU",  # nor U
        "01aryz6s41tsv4rrffq69g5fav",
        " 01ARYZ6S41TSV4RRFFQ69G5FAV",
        "01ARYZ6S41TSV4RRFFQ69G5FAV\n",
    ],
)
def test_is_ulid_refuses_other_shapes(text: str) -> None:
    assert not is_ulid(text)


def test_is_ulid_accepts_the_spec_example() -> None:
    assert is_ulid("01ARYZ6S41TSV4RRFFQ69G5FAV")
