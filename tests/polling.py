"""The one way a test waits: poll until something holds, or fail saying what and what was seen.

Never sleep for luck. A test that needs a state waits for that state, bounded by a
deadline; when the deadline passes it fails naming what it awaited and the last value
it saw::

    job = await eventually(
        lambda: store.get(job_id),
        until=lambda job: job.status.terminal,
        timeout=30,
        what=f"job {job_id} to end",
    )

The probe may be a plain function or return an awaitable; it is evaluated at least
once, and once more at the deadline. An exception it raises fails the wait at once
(an assertion inside a probe fails fast), unless its type is in ``ignoring``: then
it counts as "not yet" and is what the failure message reports as last seen.
:func:`eventually_sync` is the same for code that cannot await (a sync fixture, a
thread).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

#: How often a probe is evaluated: short, so a wait ends soon after the state arrives.
POLL_INTERVAL = 0.02


class _Wait:
    """One wait's deadline and the last value seen, and the message when it gives up."""

    def __init__(self, timeout: float, what: str, interval: float) -> None:
        if timeout <= 0 or interval <= 0:
            raise ValueError(f"timeout ({timeout}) and interval ({interval}) must be positive")
        self.timeout = timeout
        self.what = what
        self.interval = interval
        self.deadline = time.monotonic() + timeout
        self.last: object = "nothing (the probe never answered)"

    def pause(self) -> float:
        """Seconds to wait before the next try; raises once the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(self.message())
        return min(self.interval, remaining)

    def message(self, diagnosis: object = None) -> str:
        text = f"gave up after {self.timeout:g}s waiting for {self.what}; last seen: {self.last!r}"
        return text if diagnosis is None else f"{text}\n{diagnosis}"


# An async probe's T is what it awaits to, a plain probe's what it returns: two overloads,
# since mypy cannot solve T from one union of the two callables.
@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float,  # noqa: ASYNC109 -- as below
    what: str,
    until: Callable[[T], object] = ...,
    interval: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
    diagnose: Callable[[], Any] | None = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    *,
    timeout: float,  # noqa: ASYNC109 -- as below
    what: str,
    until: Callable[[T], object] = ...,
    interval: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
    diagnose: Callable[[], Any] | None = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Awaitable[T] | T],
    *,
    timeout: float,  # noqa: ASYNC109 -- the deadline is part of the failure's message
    what: str,
    until: Callable[[T], object] = bool,
    interval: float = POLL_INTERVAL,
    ignoring: tuple[type[BaseException], ...] = (),
    diagnose: Callable[[], Any] | None = None,
) -> T:
    """Evaluate ``probe`` until ``until(value)`` holds; return that value.

    ``until`` defaults to the value's truth, so a predicate can be the probe.
    ``diagnose`` (sync or async) is called only on failure, and what it returns is
    added to the message: worker logs, the state of every job.
    """
    wait = _Wait(timeout, what, interval)
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as exc:
            wait.last = exc
        else:
            wait.last = value
            if until(value):
                return value
        try:
            pause = wait.pause()
        except AssertionError:
            diagnosis = None if diagnose is None else diagnose()
            if inspect.isawaitable(diagnosis):
                diagnosis = await diagnosis
            raise AssertionError(wait.message(diagnosis)) from None
        await asyncio.sleep(pause)


def eventually_sync(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    until: Callable[[T], object] = bool,
    interval: float = POLL_INTERVAL,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`eventually` for code that cannot await: the probe is a plain function."""
    wait = _Wait(timeout, what, interval)
    while True:
        try:
            value = probe()
        except ignoring as exc:
            wait.last = exc
        else:
            wait.last = value
            if until(value):
                return value
        time.sleep(wait.pause())


__all__ = ["POLL_INTERVAL", "eventually", "eventually_sync"]
