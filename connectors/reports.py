"""What a connector reports after erasing, restricting, rectifying or acting on an objection,
and the retention rules it obeys.

Erasure (GDPR Art. 17) deletes or anonymises everything a processor holds on the
subject, except what law obliges the platform to keep (Art. 17(3)(b)): those
records are *retained and blocked* (Art. 18(2)) — kept, marked restricted,
excluded from normal processing — and the report says why and until when.

An objection (Art. 21) names purposes in Handover's words (``direct_marketing``,
``analytics``…); each connector maps them to what its processor calls them (a consent
row, a subscription type) and reports, per purpose, what it changed
(:class:`ObjectionReport`). A purpose the processor offers no way to stop is reported
as such, never as done.

A rectification (Art. 16) changes fields a connector declares :class:`Rectifiable`, each a
:class:`FieldChange`; the :class:`RectificationReport` counts the records changed per field,
never their old values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

ValueType = Literal["text", "email", "integer", "number", "boolean"]
"""The kinds of value a rectifiable field holds; Handover checks a new value against it."""


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """A legal obligation to keep a dataset: why, and for how long."""

    legal_basis: str
    duration: timedelta


@dataclass(frozen=True, slots=True)
class DatasetErasure:
    """What happened to one dataset's records for the subject.

    A second erasure of the same subject reports zero deleted and zero anonymised;
    ``retained`` counts the blocked records still kept, with their ``legal_basis``
    and ``retained_until``.
    """

    dataset: str
    deleted: int = 0
    anonymised: int = 0
    retained: int = 0
    legal_basis: str | None = None
    retained_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """A connector's answer to an erasure: one entry per dataset it holds.

    ``note`` carries what the processor said beyond counts (e.g. "deletion request
    accepted; completed within 30 days").
    """

    datasets: tuple[DatasetErasure, ...] = ()
    note: str | None = None

    def dataset(self, name: str) -> DatasetErasure:
        """The entry for ``name`` (an all-zero one when the dataset was not touched)."""
        for entry in self.datasets:
            if entry.dataset == name:
                return entry
        return DatasetErasure(name)


@dataclass(frozen=True, slots=True)
class RestrictionReport:
    """A connector's answer to a restriction (Art. 18).

    ``supported`` is false when the processor offers no way to restrict processing;
    the job then records that this recipient could not restrict.
    """

    supported: bool
    restricted: Mapping[str, int] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True, slots=True)
class PurposeObjection:
    """What one processor did about one purpose objected to.

    ``purpose`` is Handover's name, ``targets`` what the processor calls it (consent
    purposes, subscription types); ``stopped`` counts what was changed now (consents set
    to not granted, subscriptions ended): zero when it was stopped already, or the
    processor held none. ``supported`` is false when the processor offers no way to stop
    processing for it; ``note`` says why, or anything the processor added.
    """

    purpose: str
    targets: tuple[str, ...] = ()
    stopped: int = 0
    supported: bool = True
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectionReport:
    """A connector's answer to an objection (Art. 21): one entry per purpose objected to."""

    purposes: tuple[PurposeObjection, ...] = ()
    note: str | None = None

    def purpose(self, name: str) -> PurposeObjection | None:
        """The entry for ``name``, if the report has one."""
        for entry in self.purposes:
            if entry.purpose == name:
                return entry
        return None


@dataclass(frozen=True, slots=True)
class Rectifiable:
    """A field of a dataset the subject may have corrected (GDPR Art. 16).

    ``identity`` marks a field the subject is known by (an email): by default a change
    to it waits for staff approval (``HANDOVER_RECTIFICATION_APPROVAL``).
    """

    dataset: str
    field: str
    type: ValueType = "text"
    identity: bool = False


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One correction asked for: ``field`` of the subject's records of ``dataset`` becomes
    ``value`` (checked against the field's declared type before a connector sees it)."""

    dataset: str
    field: str
    value: Any


@dataclass(frozen=True, slots=True)
class FieldRectification:
    """What a processor did about one change: how many of the subject's records it changed
    now (0 when they held the value already, or the processor holds no such record).

    ``held`` false: the processor holds no such record of the subject, so nothing was
    changed and there is nothing to read back (its verification is unknown, not passed).
    """

    dataset: str
    field: str
    changed: int = 0
    note: str | None = None
    held: bool = True


@dataclass(frozen=True, slots=True)
class RectificationReport:
    """A connector's answer to a rectification: one entry per change, in the order asked."""

    fields: tuple[FieldRectification, ...] = ()
    note: str | None = None
