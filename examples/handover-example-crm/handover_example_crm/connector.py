"""Lumen, a fictional CRM, as a Handover connector.

Lumen keeps its whole state in one JSON document (the ``path`` option) holding three
lists: ``contacts``, ``deals`` and ``activities``. Every record carries the
platform's ``user_id``, which is how the connector finds a subject's data, and a
``restricted`` flag, which is how Lumen blocks a record (Art. 18).

Erasure deletes contacts and deals and anonymises activities (their ``user_id`` and
``notes`` are cleared: the sales team keeps the counts, nobody can tell whose they
were). A dataset named in the retention rules is kept and blocked instead.

Writes replace the file atomically under a lock file, so several Handover workers
may share one document; reads need no lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from connectors import (
    Connector,
    Dataset,
    DatasetErasure,
    ErasureReport,
    Item,
    PermanentError,
    Record,
    RestrictionReport,
    RetentionRule,
    Subject,
    TransientError,
)

_T = TypeVar("_T")
Document = dict[str, list[dict[str, Any]]]

ANONYMISED_FIELDS = ("user_id", "notes")
"""What anonymising an activity clears."""


class ExampleCrmConnector(Connector):
    """The subject's contact card, deals and activities in Lumen's JSON document at ``path``."""

    categories: ClassVar[frozenset[str]] = frozenset({"contact", "economic", "usage"})
    datasets: ClassVar[tuple[Dataset, ...]] = (
        Dataset(
            "contacts",
            "contact",
            "the subject's contact card",
            ("id", "user_id", "email", "name", "phone", "created_at", "restricted"),
        ),
        Dataset(
            "deals",
            "economic",
            "what the subject bought from the sales team",
            ("id", "user_id", "title", "amount", "currency", "closed_at", "restricted"),
        ),
        Dataset(
            "activities",
            "usage",
            "calls, emails and meetings with the subject",
            ("id", "user_id", "kind", "at", "notes", "restricted"),
        ),
    )
    anonymised: ClassVar[frozenset[str]] = frozenset({"activities"})
    """Datasets that erasure anonymises; the others it deletes."""

    def __init__(self, name: str, *, path: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.path = Path(path)

    async def check(self) -> None:
        """Raise unless the document exists and has Lumen's shape."""
        await self._run(self._load)

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Yield the subject's records, blocked ones included."""
        document = await self._run(self._load)
        for dataset in self.datasets:
            for record in document[dataset.name]:
                if record.get("user_id") == subject.id:
                    yield Record(dataset.name, record)

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """Delete or anonymise the subject's records; block those retention keeps."""
        now = datetime.now(UTC)

        def erase_in(document: Document) -> ErasureReport:
            entries = []
            for dataset in self.datasets:
                held = _held(document, dataset.name, subject.id)
                if not held:
                    continue
                rule = retention.get(dataset.name)
                if rule is not None:
                    for record in held:
                        record["restricted"] = True
                    entries.append(
                        DatasetErasure(
                            dataset.name,
                            retained=len(held),
                            legal_basis=rule.legal_basis,
                            retained_until=now + rule.duration,
                        )
                    )
                elif dataset.name in self.anonymised:
                    for record in held:
                        record.update(dict.fromkeys(ANONYMISED_FIELDS))
                    entries.append(DatasetErasure(dataset.name, anonymised=len(held)))
                else:
                    erased = {id(record) for record in held}
                    document[dataset.name] = [
                        r for r in document[dataset.name] if id(r) not in erased
                    ]
                    entries.append(DatasetErasure(dataset.name, deleted=len(held)))
            return ErasureReport(tuple(entries))

        return await self._run(self._update, erase_in, dry_run)

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """Set the ``restricted`` flag on every record of the subject."""

        def restrict_in(document: Document) -> RestrictionReport:
            restricted = {}
            for dataset in self.datasets:
                held = _held(document, dataset.name, subject.id)
                for record in held:
                    record["restricted"] = True
                if held:
                    restricted[dataset.name] = len(held)
            return RestrictionReport(supported=True, restricted=restricted)

        return await self._run(self._update, restrict_in, dry_run)

    def _load(self) -> Document:
        with self.path.open("rb") as handle:
            document = json.load(handle)
        if not isinstance(document, dict):
            raise ValueError("the document is not a JSON object")
        for dataset in self.datasets:
            records = document.get(dataset.name)
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError(f"{dataset.name!r} is not a list of objects")
        return document

    def _update(self, change: Callable[[Document], _T], dry_run: bool) -> _T:
        """Apply ``change`` to the document and write it back, unless ``dry_run``."""
        lock = self.path.with_name(f".{self.path.name}.lock")
        with lock.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            document = self._load()
            result = change(document)
            if not dry_run:
                self._replace(document)
            return result

    def _replace(self, document: Document) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2, ensure_ascii=False)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run file work in a thread; map what goes wrong to Handover's error classes."""
        try:
            return await asyncio.to_thread(function, *args)
        except FileNotFoundError as exc:
            raise PermanentError(
                f"connector {self.name!r}: no Lumen document at {exc.filename}"
            ) from exc
        except (PermissionError, IsADirectoryError, ValueError) as exc:
            raise PermanentError(f"connector {self.name!r}: {self.path}: {exc}") from exc
        except OSError as exc:
            raise TransientError(f"connector {self.name!r}: {self.path}: {exc}") from exc


def _held(document: Document, dataset: str, user_id: str) -> list[dict[str, Any]]:
    return [record for record in document[dataset] if record.get("user_id") == user_id]
