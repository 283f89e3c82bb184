"""Renderings of a dataset's records: ``json`` (one array), ``ndjson`` and ``csv``.

Each renderer turns a batch of records into bytes, with an opening and a closing,
so a dataset of any length streams through without being held whole.

JSON and NDJSON encode a batch with plain ``orjson.dumps`` per record, in one list
comprehension: half to two thirds of the cost of the generic encoder (:func:`dumps`)
here, and byte for byte the same wherever it succeeds, since orjson consults the
generic encoder's ``default`` and ``OPT_NON_STR_KEYS`` only for what it cannot write
itself. A batch holding such a value (a ``Decimal``, ``bytes``, a set, a key that is
not text) makes plain orjson raise, and that batch alone is encoded again by
:func:`dumps`. Each record's bytes are copied with their separator before the batch is
joined: orjson's own output keeps about 4 KB allocated while it lives, so a list of a
thousand of them would hold megabytes.

CSV is opened by spreadsheets, which run a cell that starts with ``=``, ``+``, ``-``,
``@``, tab or carriage return as a formula (CSV injection, CWE-1236). As OWASP
recommends, such a cell, header cells included, is written with a ``'`` in front and
in double quotes, so it is read as text. A number (an ``int``, a ``float``, a finite
``Decimal``) is left alone, ``-3.5`` included: its cell is a numeric literal, which no
spreadsheet runs, and marking it would turn a number into text. Every other value is
neutralised, text that looks like a number included (``"-3.5"`` is text in the JSON
rendering too). JSON and NDJSON carry every value exactly as the processor held it.
"""

from __future__ import annotations

import base64
import csv
import io
import re
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
        try:
            return b"".join([orjson.dumps(record) + b"\n" for record in records])
        except TypeError:  # a value only the generic encoder writes: this batch through it
            return b"".join([dumps(record) + b"\n" for record in records])


class JsonRenderer(Renderer):
    """One JSON array of objects, one object a line."""

    def begin(self) -> bytes:
        return b"["

    def render(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        if not records:
            return b""
        lead = b"\n" if self.count == 0 else b",\n"
        self.count += len(records)
        try:
            items = [orjson.dumps(record) + b",\n" for record in records]
        except TypeError:  # a value only the generic encoder writes: this batch through it
            items = [dumps(record) + b",\n" for record in records]
        items[0] = lead + items[0]
        items[-1] = items[-1][:-2]
        return b"".join(items)

    def end(self) -> bytes:
        return b"\n]\n" if self.count else b"]\n"


_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_QUOTED = re.compile("[\"',\r\n]")


def _text(value: Any) -> str:
    """A non-text value's cell: scalars as their JSON text, nested values as JSON."""
    encoded = dumps(value)
    if encoded.startswith(b'"'):
        text: str = orjson.loads(encoded)
        return text
    return encoded.decode()


def csv_cell(value: Any) -> str:
    """A cell's text, neutralised against formula injection (see the module doc): Handover's
    one prefix rule for every CSV it writes.

    Text is itself, ``None`` an empty cell, anything else its JSON text; a cell that a
    spreadsheet would run as a formula gets a ``'`` in front (an export's CSV also quotes
    it, through :class:`_Rows`).
    A number's text is a numeric literal (a float that is not finite is ``null``), so it
    is left as it is.
    """
    if isinstance(value, str):
        text = value
    elif value is None:
        return ""
    elif type(value) is int or type(value) is float:
        return _text(value)
    elif type(value) is Decimal and value.is_finite():
        return str(value)
    else:
        text = _text(value)
    if text.startswith(_FORMULA_TRIGGERS):
        return "'" + text
    return text


def _quoted(cell: str) -> str:
    if _QUOTED.search(cell) is None:
        return cell
    return '"' + cell.replace('"', '""') + '"'


class _Rows:
    """RFC 4180 rows of cells, a neutralised cell (one with a ``'``) quoted as well."""

    def __init__(self) -> None:
        self._out = io.StringIO()
        self._writer = csv.writer(self._out, lineterminator="\r\n")

    def add(self, cells: list[str]) -> None:
        """One row of :func:`csv_cell` texts."""
        if "'" in "".join(cells):
            self._out.write(",".join(map(_quoted, cells)) + "\r\n")
        else:
            self._writer.writerow(cells)

    def encoded(self) -> bytes:
        return self._out.getvalue().encode("utf-8")


class CsvRenderer(Renderer):
    """RFC 4180 CSV with a header row; nested values as JSON text in their cell.

    Columns are the dataset's declared fields, or else the first record's keys.
    A record with a key outside the columns breaks the connector's contract and
    fails it, rather than silently dropping data from the subject's copy.
    """

    def render(self, records: Sequence[Mapping[str, Any]]) -> bytes:
        if not records:
            return b""
        rows = _Rows()
        if self.count == 0:
            if not self.fields:
                self.fields = tuple(records[0])
            rows.add([csv_cell(name) for name in self.fields])
        allowed = set(self.fields)
        for record in records:
            extra = record.keys() - allowed
            if extra:
                raise PermanentError(
                    f"dataset {self.dataset!r}: field(s) {', '.join(sorted(map(str, extra)))} "
                    "are not among its columns; declare them in the dataset's fields"
                )
            rows.add([csv_cell(record.get(name)) for name in self.fields])
        self.count += len(records)
        return rows.encoded()


RENDERERS: dict[str, type[Renderer]] = {
    "json": JsonRenderer,
    "csv": CsvRenderer,
    "ndjson": NdjsonRenderer,
}
