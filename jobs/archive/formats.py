"""Renderings of a dataset's records: ``json`` (one array), ``ndjson`` and ``csv``.

Each renderer turns a batch of records into bytes, with an opening and a closing,
so a dataset of any length streams through without being held whole.
"""

from __future__ import annotations

import base64
import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from connectors.errors import PermanentError

FORMATS = ("json", "csv", "ndjson")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    """Encode one record as compact JSON; the one encoder every format shares."""
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise PermanentError(f"record is not serialisable: {exc}") from exc


class Renderer(ABC):
    """Renders one dataset in one format, batch by batch."""

    def __init__(self, dataset: str, fields: Sequence[str] = ()) -> None:
        self.dataset = dataset
        self.fields = tuple(fields)
        self.count = 0

    def begin(self) -> bytes:
        """Bytes before the first record."""
        return b""

    @abstractmethod
    def render(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        """Bytes for a batch of records."""

    def end(self) -> bytes:
        """Bytes after the last record."""
        return b""


class NdjsonRenderer(Renderer):
    """One JSON object a line."""

    def render(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        self.count += len(records)
        return b"".join(dumps(record) + b"\n" for record in records)


class JsonRenderer(Renderer):
    """One JSON array of objects, one object a line."""

    def begin(self) -> bytes:
        return b"["

    def render(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        if not records:
            return b""
        lead = b"\n" if self.count == 0 else b",\n"
        self.count += len(records)
        return lead + b",\n".join(dumps(record) for record in records)

    def end(self) -> bytes:
        return b"\n]\n" if self.count else b"]\n"


def _cell(value: Any) -> str:
    """A CSV cell: text as itself, scalars as their JSON text, nested values as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    encoded = dumps(value)
    if encoded.startswith(b'"'):
        text: str = orjson.loads(encoded)
        return text
    return encoded.decode()


class CsvRenderer(Renderer):
    """RFC 4180 CSV with a header row; nested values as JSON text in their cell.

    Columns are the dataset's declared fields, or else the first record's keys.
    A record with a key outside the columns breaks the connector's contract and
    fails it, rather than silently dropping data from the subject's copy.
    """

    def render(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        if not records:
            return b""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        if self.count == 0:
            if not self.fields:
                self.fields = tuple(records[0])
            writer.writerow(self.fields)
        allowed = set(self.fields)
        for record in records:
            extra = record.keys() - allowed
            if extra:
                raise PermanentError(
                    f"dataset {self.dataset!r}: field(s) {', '.join(sorted(map(str, extra)))} "
                    "are not among its columns; declare them in the dataset's fields"
                )
            writer.writerow([_cell(record.get(name)) for name in self.fields])
        self.count += len(records)
        return buffer.getvalue().encode("utf-8")


RENDERERS: dict[str, type[Renderer]] = {
    "json": JsonRenderer,
    "csv": CsvRenderer,
    "ndjson": NdjsonRenderer,
}
