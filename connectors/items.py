"""What a connector is asked about (``Subject``) and what it answers with (items)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
"""What a connector's or a dataset's name may be: it becomes part of archive paths
(``<connector>/<dataset>.json``) and of retention rules (``connector/dataset``), so no
``/``, ``.``, ``\\`` or anything else a path could be made of."""


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid connector or dataset name (:data:`NAME`); else ValueError."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} must be 1 to 63 letters, digits, - or _, "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Subject:
    """The person a request is about.

    ``id`` is the platform's user id (the token's ``sub``); ``email`` and the further
    ``identities`` (e.g. ``{"hubspot_contact_id": "901"}``, ``{"phone_number": …}``)
    help processors that key their data differently. Handover resolves them before
    any processor runs (verified token claims, identifiers staff supplied with how
    they were verified, identity-source connectors) and hands every connector all of
    them; a connector that finds none of the identifiers it declares raises
    :class:`~connectors.errors.Unidentified`.
    """

    id: str
    email: str | None = None
    identities: Mapping[str, str] = field(default_factory=dict)

    def identifier(self, name: str) -> str | None:
        """The identifier called ``name`` (``id``, ``email`` or an identity), if known."""
        if name == "id":
            return self.id
        if name == "email":
            return self.email
        return self.identities.get(name)


@dataclass(frozen=True, slots=True)
class Dataset:
    """A kind of record a connector holds, declared up front.

    ``category`` is the GDPR category of personal data (identification, contact,
    economic, device, telemetry, usage, cookies, ...). ``fields`` fixes the column
    order of the CSV rendering; when empty, the first record's keys are used.
    ``notice`` marks a dataset that is a statement about the processing rather than
    data held on the subject (e.g. "this processor offers no per-user export"): it
    is exported for everyone and is not something an erasure removes.

    ``name`` must match :data:`NAME` (it names the dataset's file in the archive):
    a declaration with any other name raises :class:`ValueError`.
    """

    name: str
    category: str
    description: str = ""
    fields: tuple[str, ...] = ()
    notice: bool = False

    def __post_init__(self) -> None:
        check_name("dataset", self.name)


@dataclass(frozen=True, slots=True)
class Record:
    """One record of ``dataset`` held on the subject: a JSON-serialisable mapping."""

    dataset: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Records:
    """Many records of ``dataset`` at once, in order: a batch, as a cursor or a page holds them.

    What :meth:`~connectors.base.Connector.export_batches` yields: each row is what a
    :class:`Record`'s ``data`` would be. Handover encodes a batch in one go, so a page
    of rows costs far less than the same rows one :class:`Record` at a time. Give a
    batch a page's worth of rows (hundreds to thousands); Handover never holds more
    than a few batches at once.
    """

    dataset: str
    rows: Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class File:
    """A binary file held on the subject (an upload, an image).

    It lands in the archive at ``<connector>/files/<path>``; ``content`` is the whole
    body or an async stream of chunks, so large files never sit whole in memory.
    """

    path: str
    content: bytes | AsyncIterable[bytes]
    media_type: str = "application/octet-stream"
    dataset: str = "files"


Item = Record | File
"""What :meth:`~connectors.base.Connector.export` yields, one at a time."""

Batch = Records | File
"""What :meth:`~connectors.base.Connector.export_batches` yields."""
