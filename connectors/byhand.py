"""Processors without an API: the ``email`` and ``manual`` connector types.

Such a processor cannot be called; a person does the work. Its connector never
answers by itself: Handover *asks* (an email to the processor's privacy contact, or
a task for staff on the dashboard), the run waits (``waiting_on_processor``, holding
no worker and no lease), and the person's reply, given through a single-use link or
the dashboard, is what the connector then answers with::

    [connectors.payroll]
    type = "email"
    to = "privacy@payroll.example"      # the processor's privacy contact
    identifiers = ["email"]             # what it knows the subject by; only these are sent
    reply_within_days = 7               # the processor's own deadline (never past the job's)
    remind_every_days = 2               # reminders until it replies; overdue: support is told
    category = "economic"               # what its data is, for the archive and the receipt
    recipient = "Payroll Ltd"           # the Art. 15(1) information, as for every connector

    [connectors.archive-room]
    type = "manual"                     # a task for staff on the dashboard
    checklist = ["Search the paper files", "Scan what is found"]
    identifiers = ["id", "email"]

The seam (imports point one way: this package knows nothing of mail or jobs):

- :meth:`ByHandConnector.request` says what is asked of the person: the request's
  kind, its GDPR article, and only the identifiers this processor keys its data by.
  Handover delivers it and parks the run until a reply.
- :meth:`ByHandConnector.answered` binds a :class:`Reply` (what the person gave, files
  as streams) to a connector whose ``export``, ``erase`` and ``restrict`` answer with
  it. Handover's pipelines then treat it like any other connector: the files are
  staged, checksummed and listed in the signed manifest; the statement, and who gave
  it, goes into the signed receipt. The connector called *without* a reply raises
  :class:`~connectors.errors.PermanentError`: it never answers "nothing held".

A person's statement about an erasure is a statement, not something Handover can
check: :meth:`Answered.verification` says so in the receipt, instead of a
re-export that would prove nothing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from connectors.base import Connector
from connectors.errors import PermanentError
from connectors.items import Dataset, File, Item, Subject
from connectors.options import Options
from connectors.reports import (
    DatasetErasure,
    ErasureReport,
    ObjectionReport,
    PurposeObjection,
    RestrictionReport,
    RetentionRule,
)

#: The dataset a reply's files land in: ``<connector>/files/<name>`` in the archive.
FILES = "files"
#: What each request asks, and under which article of the GDPR.
ARTICLES = {
    "export": "Art. 15 (access) and Art. 20 (portability)",
    "erasure": "Art. 17 (erasure), as Art. 19 requires of recipients",
    "restriction": "Art. 18 (restriction of processing)",
    "rectification": "Art. 16 (rectification), as Art. 19 requires of recipients",
    "objection": "Art. 21 (objection to processing)",
}
#: Why a by-hand processor is not asked in a dry run (its report, and its run, say so).
NOT_ASKED_IN_DRY_RUN = "a dry run: a person serves this processor, and was not asked"
_ADDRESS = re.compile(r'[^@\s<>,;:"()\[\]\\]+@[^@\s<>,;:"()\[\]\\]+')


@dataclass(frozen=True, slots=True)
class Request:
    """What is asked of the person doing a processor's part by hand.

    ``identifiers`` holds only those the processor keys its data by (its configured
    ``identifiers``) that are known: personal data, for the request itself only.
    """

    kind: str
    article: str
    identifiers: Mapping[str, str]
    instructions: str | None
    checklist: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Erased:
    """One line of a person's statement about an erasure or a restriction.

    ``outcome``: ``erased``, ``anonymised``, ``kept`` (with ``legal_basis`` and
    optionally ``until``), ``restricted``, ``stopped`` (an objection's purpose, named in
    ``what``), or ``not_found`` (nothing held under this description).
    """

    what: str
    outcome: str
    records: int = 0
    legal_basis: str | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the person answered, and who they said they are.

    ``files`` are the export's files, their content streamed from where Handover
    keeps them; ``lines`` the statement about an erasure or restriction. ``via`` is how
    it came: ``link`` (whoever held the reply link; ``by`` as they gave it) or
    ``dashboard`` (signed-in staff: ``recorded_by`` names them, as the session
    established it, and ``checklist`` holds the task's steps they ticked).
    """

    by: str
    at: datetime
    files: tuple[File, ...] = ()
    lines: tuple[Erased, ...] = ()
    note: str | None = None
    via: str = "link"
    recorded_by: str | None = None
    checklist: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Channel:
    """How a by-hand processor is reached: its type's name and, for email, the address."""

    kind: str
    to: str | None = None


class ByHandConnector(Connector):
    """A processor a person serves: asked through Handover, answered by a reply.

    Subclasses say how the person is reached (:attr:`channel`). Options every such
    connector takes: ``identifiers`` (default ``["email"]``), ``reply_within_days``
    (default 7), ``remind_every_days`` (default 2), ``category`` (default
    ``other``), ``instructions``.
    """

    #: The type's name as configured: ``email`` or ``manual``.
    kind: ClassVar[str]
    _OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"identifiers", "reply_within_days", "remind_every_days", "category", "instructions"}
    )

    def __init__(self, name: str, **options: Any) -> None:
        check = Options(name)
        extra = sorted(set(options) - self._OPTIONS - self._own_options())
        if extra:
            raise PermanentError(f"connector {name!r}: unknown option(s) {', '.join(extra)}")
        super().__init__(name)
        self.identifiers = frozenset(
            check.text_list("identifiers", options.get("identifiers", ["email"]))
        )
        if not self.identifiers:
            raise check.error("identifiers", "must name at least one identifier")
        self.reply_within_days = check.whole(
            "reply_within_days", options.get("reply_within_days", 7)
        )
        self.remind_every_days = check.whole(
            "remind_every_days", options.get("remind_every_days", 2)
        )
        category = check.text("category", options.get("category", "other"))
        self.instructions = check.optional_text("instructions", options.get("instructions"))
        self.datasets = (  # type: ignore[misc]
            Dataset(FILES, category, "what the processor's staff sent back, as they sent it"),
        )
        self.categories = frozenset({category})  # type: ignore[misc]

    @classmethod
    def _own_options(cls) -> frozenset[str]:
        """Options of the subclass beyond those every by-hand connector takes."""
        return frozenset()

    @property
    def channel(self) -> Channel:
        """How the person is reached."""
        return Channel(self.kind)

    @property
    def checklist(self) -> tuple[str, ...]:
        """The steps staff tick off (``manual``); none for email."""
        return ()

    def request(self, subject: Subject, kind: str) -> Request:
        """What to ask for ``kind`` (export, erasure, …) about ``subject``.

        Only the identifiers this processor keys its data by, and only those known.
        """
        if kind not in ARTICLES:
            raise PermanentError(f"connector {self.name!r}: cannot ask a person for {kind!r}")
        known = {
            name: value
            for name in sorted(self.identifiers)
            if (value := subject.identifier(name)) is not None
        }
        return Request(kind, ARTICLES[kind], known, self.instructions, self.checklist)

    def answered(self, reply: Reply) -> Answered:
        """This connector answering with ``reply`` (for one job's run only)."""
        return Answered(self, reply)

    def describe(self) -> Mapping[str, Any]:
        """As every connector, plus how its processor is reached."""
        channel = self.channel
        shown: dict[str, Any] = {**super().describe(), "by_hand": channel.kind}
        if channel.to is not None:
            shown["contact"] = channel.to
        return shown

    def export(self, subject: Subject) -> AsyncIterator[Item]:
        """Never called without a reply: a person's processor cannot be read."""
        raise PermanentError(f"connector {self.name!r} answers only with a person's reply")

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """A dry run: nobody is asked, and the report says so. Otherwise never called
        without a reply."""
        if dry_run:
            return ErasureReport(note=NOT_ASKED_IN_DRY_RUN)
        raise PermanentError(f"connector {self.name!r} answers only with a person's reply")

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """As :meth:`erase`."""
        if dry_run:
            return RestrictionReport(supported=False, note=NOT_ASKED_IN_DRY_RUN)
        raise PermanentError(f"connector {self.name!r} answers only with a person's reply")


class EmailConnector(ByHandConnector):
    """The ``email`` type: the processor's privacy contact gets the request by email,
    with a single-use link to reply through. Option ``to``: that address (required)."""

    kind = "email"

    def __init__(self, name: str, **options: Any) -> None:
        to = options.pop("to", None)
        super().__init__(name, **options)
        address = Options(name).text("to", to)
        if len(address) > 320 or not _ADDRESS.fullmatch(address):
            raise Options(name).error("to", f"must be one email address, got {address!r}")
        self.to = address

    @classmethod
    def _own_options(cls) -> frozenset[str]:
        """``to``."""
        return frozenset({"to"})

    @property
    def channel(self) -> Channel:
        """Email to :attr:`to`."""
        return Channel(self.kind, self.to)


class ManualConnector(ByHandConnector):
    """The ``manual`` type: a task for staff on the dashboard, for systems worked by hand.
    Option ``checklist``: the steps staff tick off (a list of text)."""

    kind = "manual"

    def __init__(self, name: str, **options: Any) -> None:
        steps = options.pop("checklist", [])
        super().__init__(name, **options)
        self._checklist = Options(name).text_list("checklist", steps)

    @classmethod
    def _own_options(cls) -> frozenset[str]:
        """``checklist``."""
        return frozenset({"checklist"})

    @property
    def checklist(self) -> tuple[str, ...]:
        """The configured steps."""
        return self._checklist


class Answered(Connector):
    """A by-hand connector answering one run with a person's :class:`Reply`."""

    def __init__(self, asked: ByHandConnector, reply: Reply) -> None:
        super().__init__(asked.name)
        self.asked = asked
        self.reply = reply
        self.identifiers = asked.identifiers
        self.datasets = asked.datasets  # type: ignore[misc]
        self.categories = asked.categories  # type: ignore[misc]
        self.processing = asked.processing

    def describe(self) -> Mapping[str, Any]:
        """As the connector asked."""
        return self.asked.describe()

    async def export(self, subject: Subject) -> AsyncIterator[Item]:
        """The files the person sent."""
        for file in self.reply.files:
            yield file

    async def erase(
        self, subject: Subject, *, dry_run: bool, retention: Mapping[str, RetentionRule]
    ) -> ErasureReport:
        """The person's statement as a report: a dataset entry per line."""
        entries = [_entry(line) for line in self.reply.lines]
        return ErasureReport(tuple(entries), note=self.reply.note)

    async def restrict(self, subject: Subject, *, dry_run: bool) -> RestrictionReport:
        """The person's statement: what they restricted (none restricted: not supported)."""
        restricted = {
            line.what: line.records for line in self.reply.lines if line.outcome == "restricted"
        }
        found = any(line.outcome == "not_found" for line in self.reply.lines)
        return RestrictionReport(
            supported=bool(restricted) or found, restricted=restricted, note=self.reply.note
        )

    async def object(self, subject: Subject, purposes: Sequence[str]) -> ObjectionReport:
        """The person's statement, one line per purpose (``what``): ``stopped`` (how many
        records), ``not_found`` (nothing processed for it); a purpose the statement does not
        mention is reported unsupported, never as stopped."""
        lines = {line.what: line for line in self.reply.lines}
        entries = []
        for purpose in purposes:
            line = lines.get(purpose)
            if line is None or line.outcome not in {"stopped", "not_found"}:
                entries.append(
                    PurposeObjection(
                        purpose, supported=False, note="the processor's reply does not say"
                    )
                )
                continue
            stopped = line.records if line.outcome == "stopped" else 0
            entries.append(PurposeObjection(purpose, stopped=stopped, note=line.outcome))
        return ObjectionReport(tuple(entries), note=self.reply.note)

    def statement(self) -> dict[str, Any]:
        """Who answered and when, and what they stated, as signed documents record it;
        recorded on the dashboard, also which staff member recorded it and the steps done."""
        shown: dict[str, Any] = {
            "by_hand": self.asked.channel.kind,
            "given_by": self.reply.by,
            "given_at": self.reply.at.isoformat().replace("+00:00", "Z"),
            "via": self.reply.via,
            "lines": [_line(line) for line in self.reply.lines],
            "note": self.reply.note,
        }
        if self.reply.via == "dashboard":
            shown.update(
                recorded_by=self.reply.recorded_by, checklist_done=list(self.reply.checklist)
            )
        return shown

    def verification(self) -> dict[str, Any]:
        """What can be said of checking the erasure: nothing Handover saw itself."""
        return {
            "passed": None,
            "method": "the processor's own statement; Handover cannot read this processor",
        }


def _entry(line: Erased) -> DatasetErasure:
    return DatasetErasure(
        line.what,
        deleted=line.records if line.outcome == "erased" else 0,
        anonymised=line.records if line.outcome == "anonymised" else 0,
        retained=line.records if line.outcome == "kept" else 0,
        legal_basis=line.legal_basis,
        retained_until=line.until,
    )


def _line(line: Erased) -> dict[str, Any]:
    shown: dict[str, Any] = {"what": line.what, "outcome": line.outcome, "records": line.records}
    if line.legal_basis is not None:
        shown["legal_basis"] = line.legal_basis
    if line.until is not None:
        shown["until"] = line.until.isoformat().replace("+00:00", "Z")
    return shown


def reply_file(name: str, content: bytes | AsyncIterable[bytes], media_type: str) -> File:
    """A file of a reply, in the ``files`` dataset."""
    return File(name, content, media_type=media_type, dataset=FILES)


__all__ = [
    "ARTICLES",
    "FILES",
    "NOT_ASKED_IN_DRY_RUN",
    "Answered",
    "ByHandConnector",
    "Channel",
    "EmailConnector",
    "Erased",
    "ManualConnector",
    "Reply",
    "Request",
    "reply_file",
]
