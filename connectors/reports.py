"""What a connector reports after erasing or restricting, and the retention rules it obeys.

Erasure (GDPR Art. 17) deletes or anonymises everything a processor holds on the
subject, except what law obliges the platform to keep (Art. 17(3)(b)): those
records are *retained and blocked* (Art. 18(2)) — kept, marked restricted,
excluded from normal processing — and the report says why and until when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta


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
