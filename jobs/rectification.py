"""Rectification jobs (GDPR Art. 16): inaccurate data corrected at the processors that hold it.

A rectification names changes: a field of a dataset at a connector, and its new value.
Only fields a connector declares :class:`~connectors.reports.Rectifiable` may be changed,
and each new value must be of the field's declared type (:func:`checked_changes` says
which change is wrong, and why). Whether a change waits for staff's approval is
``HANDOVER_RECTIFICATION_APPROVAL`` (:data:`APPROVAL_MODES`): by default only changes to
an identity field (an email) do, in ``awaiting_confirmation``, until
:meth:`jobs.commands.Commands.decide`.

Each named connector applies its changes (:meth:`~connectors.base.Connector.rectify`),
then Handover reads them back (:meth:`~connectors.base.Connector.rectifications_in_force`):
a field that does not hold the new value fails the run, naming it. The new values are
personal data: they live on the job (:attr:`jobs.model.Job.new_values`) only while it is
live; the signed receipt (:mod:`jobs.archive.receipt`) says which fields were changed at
which processor, and how many records, never a value, old or new.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connectors.base import Connector
from connectors.errors import PermanentError
from connectors.reports import FieldChange, ValueType
from jobs.archive.receipt import build_receipt
from jobs.model import FieldRef, InvalidRequest, Job, JobKind, iso, utcnow
from jobs.pipeline import Outcome, Pipeline
from jobs.recipients import Recipients

APPROVAL_MODES = ("identity", "all", "none")
"""``HANDOVER_RECTIFICATION_APPROVAL``: which rectifications wait for staff's approval —
those changing an identity field, all of them, or none."""

MAX_TEXT = 1000
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def value_problem(kind: ValueType, value: object) -> str | None:
    """Why ``value`` cannot be a field of type ``kind``; None when it can."""
    if kind in ("text", "email"):
        if not isinstance(value, str) or not value.strip():
            return f"expected {kind}, got {_described(value)}"
        if len(value) > MAX_TEXT:
            return f"at most {MAX_TEXT} characters"
        if kind == "email" and not _EMAIL.fullmatch(value):
            return "expected an email address"
        return None
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {_described(value)}"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {_described(value)}"
    return None if isinstance(value, bool) else f"expected true or false, got {_described(value)}"


def _described(value: object) -> str:
    names = {str: "text", bool: "a boolean", int: "an integer", float: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def checked_changes(
    connectors: Mapping[str, Connector], changes: Sequence[Mapping[str, Any]]
) -> tuple[list[FieldRef], list[Any]]:
    """The changes asked for, checked: each to a field its connector declares rectifiable,
    with a value of the field's type, none twice. Raises :class:`InvalidRequest` naming the
    change (``changes[1].field``) and what is wrong."""
    if not changes:
        raise InvalidRequest("changes", "name at least one field to correct")
    refs: list[FieldRef] = []
    values: list[Any] = []
    seen: set[tuple[str, str, str]] = set()
    for index, change in enumerate(changes):
        where = f"changes[{index}]"
        name = change["connector"]
        connector = connectors.get(name)
        if connector is None:
            known = ", ".join(sorted(connectors))
            raise InvalidRequest(
                f"{where}.connector", f"unknown connector {name!r}; known: {known}"
            )
        declared = {(r.dataset, r.field): r for r in connector.rectifiable}
        field = declared.get((change["dataset"], change["field"]))
        if field is None:
            offered = ", ".join(f"{d}.{f}" for d, f in sorted(declared)) or "none"
            raise InvalidRequest(
                f"{where}.field",
                f"{change['dataset']}.{change['field']} is not rectifiable at {name}; "
                f"rectifiable: {offered}",
            )
        problem = value_problem(field.type, change["value"])
        if problem is not None:
            raise InvalidRequest(f"{where}.value", problem)
        key = (name, field.dataset, field.field)
        if key in seen:
            raise InvalidRequest(f"{where}.field", f"{field.dataset}.{field.field} is named twice")
        seen.add(key)
        refs.append(
            FieldRef(
                connector=name, dataset=field.dataset, field=field.field, identity=field.identity
            )
        )
        value = change["value"]
        values.append(value.strip() if isinstance(value, str) else value)
    return refs, values


def approval_needed(mode: str, refs: Sequence[FieldRef]) -> bool:
    """Whether a rectification of ``refs`` waits for staff under ``mode``."""
    return mode == "all" or (mode == "identity" and any(ref.identity for ref in refs))


class RectificationPipeline(Pipeline):
    """The work of rectification jobs."""

    kinds = (JobKind.RECTIFICATION,)

    async def work(self, connector: Connector, job: Job) -> Outcome:
        """Apply the connector's changes, then read them back."""
        refs = job.rectification_options.changes
        if len(job.new_values) != len(refs):
            raise PermanentError("the new values are gone: the job ended before it ran")
        changes = [
            FieldChange(ref.dataset, ref.field, value)
            for ref, value in zip(refs, job.new_values, strict=True)
            if ref.connector == connector.name
        ]
        subject = job.subject_view
        report = await connector.rectify(subject, changes)
        if len(report.fields) != len(changes):
            raise PermanentError(
                f"connector {connector.name!r} reported on {len(report.fields)} of "
                f"{len(changes)} change(s)"
            )
        held = [entry.held for entry in report.fields]
        in_force = list(await connector.rectifications_in_force(subject, changes))
        stale = [
            f"{c.dataset}.{c.field}"
            for c, ok, found in zip(changes, in_force, held, strict=False)
            if found and not ok
        ]
        if len(in_force) != len(changes) or stale:
            raise PermanentError(
                "verification failed: not holding the new value: " + ", ".join(stale or ["?"])
            )
        # A field the processor holds no record of was not changed, and reading it back
        # proves nothing: unknown (None), never passed.
        fields = [
            {
                "dataset": entry.dataset,
                "field": entry.field,
                "changed": entry.changed,
                "verified": True if entry.held else None,
                "note": entry.note or (None if entry.held else "no such record: nothing changed"),
            }
            for entry in report.fields
        ]
        return Outcome(
            records=sum(entry.changed for entry in report.fields),
            report={
                "fields": fields,
                "note": report.note,
                "verification": {
                    "checked_at": iso(utcnow()),
                    "passed": True if any(held) else None,
                },
            },
        )

    async def complete(self, job: Job) -> Callable[[Job], None]:
        """Sign the receipt, built from the runs' recorded reports (no values in them)."""
        resources = self.resources
        recipients = await Recipients(resources).queue(job)
        await resources.keyring.publish(resources.signer)
        described = {name: connector.describe() for name, connector in resources.connectors.items()}
        receipt = build_receipt(
            job,
            connectors=described,
            signer=resources.signer,
            issued_at=utcnow(),
            recipients=recipients,
        )

        def record_receipt(job: Job) -> None:
            job.receipt = receipt

        return record_receipt
