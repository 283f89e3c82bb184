"""A connector type for fault tests, loaded by ``handover worker`` processes too.

Registered as ``crashing-sql`` by ``tests/conftest.py``; it imports nothing of the
test suite, so a worker process can load it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from redis.exceptions import ConnectionError as RedisConnectionError

from connectors.items import Item, Subject
from connectors.reports import ErasureReport, RetentionRule
from connectors.sql import SqlConnector


class CrashingSqlConnector(SqlConnector):
    """The ``sql`` connector, dying once at a chosen moment of an erasure.

    ``crash_at``: ``before_commit`` (the plan is journaled, nothing committed),
    ``after_commit`` (committed, :meth:`erase` not yet returned) or ``verification``
    (the attempt was confirmed; the export that checks it starts) or ``finish`` (the
    erasure's finish, once it deleted Handover's own copies). ``crash`` is
    ``kill`` (SIGKILL to the worker process) or ``redis`` (Handover's Redis fails
    right then, as when it stalls). It crashes only while the file ``marker``
    exists, and removes it first, so the next attempt goes through.
    """

    journals_commits: ClassVar[bool] = True

    def __init__(
        self, name: str, *, crash_at: str, marker: str, crash: str = "kill", **options: Any
    ) -> None:
        super().__init__(name, **options)
        self.crash_at, self.marker, self.crash = crash_at, Path(marker), crash

    def _maybe_crash(self, moment: str) -> None:
        if moment != self.crash_at or not self.marker.exists():
            return
        self.marker.unlink()
        if self.crash == "redis":
            raise RedisConnectionError(f"Redis stalled ({moment}, injected)")
        os.kill(os.getpid(), signal.SIGKILL)

    async def before_commit(self, planned: ErasureReport) -> None:
        await super().before_commit(planned)
        self._maybe_crash("before_commit")

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        report = await super().erase(subject, dry_run=dry_run, retention=retention)
        if not dry_run:
            self._maybe_crash("after_commit")
        return report

    def export(self, subject: Subject) -> AsyncIterator[Item]:
        self._maybe_crash("verification")
        return super().export(subject)

    def describe(self) -> Mapping[str, Any]:
        self._maybe_crash("finish")
        return super().describe()
