"""The tests' one polling helper: it waits for what it is told, and fails saying what it saw."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.polling import eventually, eventually_sync


class Counter:
    """Counts calls; ``ready_at`` is the call from which it reports readiness."""

    def __init__(self, ready_at: int) -> None:
        self.calls = 0
        self.ready_at = ready_at

    def __call__(self) -> int:
        self.calls += 1
        return self.calls

    async def later(self) -> int:
        return self()

    def ready(self, calls: int) -> bool:
        return calls >= self.ready_at


async def test_returns_the_first_value_that_holds_sync_or_async() -> None:
    makers: tuple[Callable[[Counter], Callable[[], int] | Callable[[], Awaitable[int]]], ...] = (
        lambda c: c,
        lambda c: c.later,
    )
    for make in makers:
        counter = Counter(ready_at=3)
        value = await eventually(make(counter), until=counter.ready, timeout=5, what="three calls")
        assert (value, counter.calls) == (3, 3)


async def test_a_predicate_is_its_own_condition() -> None:
    counter = Counter(ready_at=2)
    assert await eventually(lambda: counter.ready(counter()), timeout=5, what="two calls") is True
    assert counter.calls == 2


async def test_gives_up_at_the_deadline_naming_what_and_the_last_value() -> None:
    counter = Counter(ready_at=10**9)
    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        await eventually(counter, until=counter.ready, timeout=0.2, what="the impossible")
    waited = time.monotonic() - started
    assert 0.2 <= waited < 2.0  # not a moment early; late by scheduling at most
    assert str(failure.value) == (
        f"gave up after 0.2s waiting for the impossible; last seen: {counter.calls}"
    )
    assert counter.calls >= 2  # tried again until the deadline, once more at it


async def test_an_assertion_in_the_probe_fails_at_once() -> None:
    calls = 0

    def failed_job() -> str:
        nonlocal calls
        calls += 1
        raise AssertionError("the job failed")

    with pytest.raises(AssertionError, match="^the job failed$"):
        await eventually(failed_job, timeout=5, what="the job")
    assert calls == 1


async def test_ignored_errors_count_as_not_yet_and_show_as_last_seen() -> None:
    answers: Iterator[ConnectionError | str] = iter(
        [ConnectionError("down"), ConnectionError("still down"), "up"]
    )

    def server() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await eventually(server, timeout=5, what="it", ignoring=(ConnectionError,)) == "up"

    def down() -> str:
        raise ConnectionError("down")

    with pytest.raises(AssertionError, match=r"for it; last seen: ConnectionError\('down'\)$"):
        await eventually(down, timeout=0.05, what="it", ignoring=(ConnectionError,))


async def test_a_diagnosis_is_added_to_the_failure_only() -> None:
    diagnosed: list[str] = []

    async def diagnose() -> str:
        diagnosed.append("asked")
        return "worker log: nothing ran"

    assert await eventually(lambda: True, timeout=5, what="truth", diagnose=diagnose)
    assert diagnosed == []
    with pytest.raises(AssertionError) as failure:
        await eventually(lambda: False, timeout=0.05, what="falsehood", diagnose=diagnose)
    assert str(failure.value).endswith("last seen: False\nworker log: nothing ran")
    assert diagnosed == ["asked"]


def test_the_sync_variant_waits_and_gives_up_the_same_way() -> None:
    counter = Counter(ready_at=3)
    assert eventually_sync(counter, until=counter.ready, timeout=5, what="three calls") == 3
    with pytest.raises(
        AssertionError, match="^gave up after 0.05s waiting for never; last seen: 0$"
    ):
        eventually_sync(lambda: 0, timeout=0.05, what="never")


def test_a_wait_needs_a_positive_timeout_and_interval() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        eventually_sync(lambda: True, timeout=0, what="nothing")
    with pytest.raises(ValueError, match="must be positive"):
        eventually_sync(lambda: True, timeout=1, what="nothing", interval=0)
