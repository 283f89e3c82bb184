"""Objection jobs (GDPR Art. 21): processing for the purposes objected to stopped everywhere.

Handover names purposes in its own words; each connector maps those it can act on
(``objection_purposes``, from its configuration) to what its processor calls them: a
consent row set to not granted, a subscription type ended. :data:`DIRECT_MARKETING`
is absolute (Art. 21(2), 21(3)): no balancing, no confirmation, it runs at once. Any
other purpose (Art. 21(1), 21(6)) waits in ``awaiting_confirmation`` for staff's
decision (:meth:`jobs.commands.Commands.decide`): upheld, it runs; rejected with the
compelling legitimate grounds, it ends ``refused`` and the subject is told why.

At each processor :meth:`~connectors.base.Connector.object` acts, then
:meth:`~connectors.base.Connector.objections_in_force` reads back: a purpose the
processor acted on that is still processed fails the run, naming it. A purpose a
processor offers no way to stop is reported so (``supported: false``, with its note),
never as done. A processor served by hand (:class:`~connectors.byhand.Answered`) cannot be
read back: its entry carries the person's statement, who gave it, and a verification that
says it was not checked (``passed: null``). Any other run's verification passed only when
every purpose acted on there was read back in force; a run that acted on nothing, or could
not read a purpose back, says ``passed: null`` and what was not read back. The finished
job carries a signed receipt (:mod:`jobs.archive.receipt`) built from the runs' recorded
reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from connectors.base import Connector
from connectors.byhand import Answered, ByHandConnector
from connectors.errors import PermanentError
from jobs.archive.receipt import build_receipt
from jobs.model import Job, JobKind, iso, utcnow
from jobs.pipeline import Outcome, Pipeline

DIRECT_MARKETING = "direct_marketing"
"""The purpose an objection to which is absolute (GDPR Art. 21(2), 21(3))."""


def known_purposes(connectors: Mapping[str, Connector]) -> list[str]:
    """The purposes a subject may object to here: every purpose a configured connector can
    act on, and direct marketing where a person serves a processor by hand (they can be
    asked to stop it). A purpose nothing here could act on is not offered: an objection
    to it would stop nothing."""
    by_hand = any(isinstance(connector, ByHandConnector) for connector in connectors.values())
    named = {DIRECT_MARKETING} if by_hand else set()
    for connector in connectors.values():
        named |= connector.objection_purposes
    return sorted(named)


def split_purposes(purposes: Iterable[str]) -> tuple[list[str], list[str]]:
    """Purposes objected to at once (direct marketing) and those that wait for a decision."""
    asked = list(dict.fromkeys(purposes))
    at_once = [purpose for purpose in asked if purpose == DIRECT_MARKETING]
    return at_once, [purpose for purpose in asked if purpose != DIRECT_MARKETING]


def _read_back(acted: list[str], in_force: Mapping[str, bool]) -> dict[str, Any]:
    """The run's verification: passed only when every purpose acted on here was read back in
    force; else ``passed: null``, saying what was not read back (nothing acted on here, or a
    purpose the processor cannot read)."""
    checked = {"checked_at": iso(utcnow())}
    unread = [purpose for purpose in acted if in_force.get(purpose) is not True]
    if acted and not unread:
        return {**checked, "passed": True}
    method = (
        "not read back: " + ", ".join(unread) + " cannot be read at this processor"
        if unread
        else "not read back: no purpose objected to was acted on at this processor"
    )
    return {**checked, "passed": None, "method": method}


class ObjectionPipeline(Pipeline):
    """The work of objection jobs."""

    kinds = (JobKind.OBJECTION,)

    async def work(self, connector: Connector, job: Job) -> Outcome:
        """Stop processing for the purposes at one processor, then read back that it did."""
        subject = job.subject_view
        purposes = job.objection_options.purposes
        report = await connector.object(subject, purposes)
        reported = {entry.purpose: entry for entry in report.purposes}
        missing = [purpose for purpose in purposes if purpose not in reported]
        if missing:
            raise PermanentError(
                f"connector {connector.name!r} reported nothing on purpose(s) {', '.join(missing)}"
            )
        acted = [purpose for purpose in purposes if reported[purpose].supported]
        in_force = await connector.objections_in_force(subject, acted) if acted else {}
        still = [purpose for purpose in acted if in_force.get(purpose) is False]
        if still:
            raise PermanentError("verification failed: still processed for " + ", ".join(still))
        entries: list[dict[str, Any]] = []
        for purpose in purposes:
            entry = reported[purpose]
            entries.append(
                {
                    "purpose": purpose,
                    "supported": entry.supported,
                    "targets": list(entry.targets),
                    "stopped": entry.stopped,
                    # True: read back and in force; None: not acted on, or not readable.
                    "verified": in_force.get(purpose),
                    "note": entry.note,
                }
            )
        result: dict[str, Any] = {"purposes": entries, "note": report.note}
        if isinstance(connector, Answered):  # a person's word: nothing Handover can read back
            result["verification"] = connector.verification()
            result["statement"] = connector.statement()
        else:
            result["verification"] = _read_back(acted, in_force)
        return Outcome(records=sum(entry["stopped"] for entry in entries), report=result)

    async def complete(self, job: Job) -> Callable[[Job], None]:
        """Sign the receipt, built from the runs' recorded reports."""
        resources = self.resources
        await resources.keyring.publish(resources.signer)
        described = {name: connector.describe() for name, connector in resources.connectors.items()}
        receipt = build_receipt(
            job, connectors=described, signer=resources.signer, issued_at=utcnow()
        )

        def record_receipt(job: Job) -> None:
            job.receipt = receipt

        return record_receipt
