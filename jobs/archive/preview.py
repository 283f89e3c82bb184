"""What the archive's ``index.html`` shows of a dataset, gathered while it is staged.

Staging sees every row once (:mod:`jobs.archive.staging`); a :class:`Gatherer` looks
at the same rows as they pass, so the index needs no second reading of an export,
however large. What it keeps is bounded whatever the dataset's size:

- the first :data:`PREVIEW_ROWS` rows, of at most :data:`PREVIEW_COLUMNS` columns,
  each cell cut at :data:`CELL_CHARS` characters (about 10 KB at most);
- for a dataset declaring a :class:`~connectors.items.Series`, per series (one per
  value of its ``by`` column, :data:`SERIES_CHARTED` at most) the number of
  readings, the first and last moment, and one point every ``stride`` readings,
  ``stride`` doubling whenever more than :data:`SERIES_POINTS` points would be kept
  (so at most 8 × 120 points a dataset). Readings of series beyond the first
  :data:`SERIES_CHARTED` are counted, not charted.

The preview is a plain mapping. It holds the subject's data, so it lives exactly as
long as the staged data does: the export pipeline writes each connector's previews (JSON,
by dataset) at the end of its staged object, after the data, deleted with it, never in
the job record (:meth:`jobs.export.ExportPipeline._staged`)::

    {"columns": [...], "rows": [[cell, ...], ...], "columns_left_out": int,
     "series": {"time": str, "values": [...], "by": str | None,
                "charts": [{"key": str | None, "readings": int, "first": float,
                            "last": float, "stride": int, "naive": bool,
                            "points": [[t, v, ...], ...]}],
                "readings_not_charted": int}}

Moments are Unix seconds. A reading's moment is its ``time`` column: a number (Unix
seconds, within the years 1 to 9999: a number past them, epoch milliseconds say, is no
moment established), ISO 8601 text, or a ``datetime`` or ``date`` (as a SQL database's
rows hold them); a reading whose moment is none of these is counted in ``readings`` and
left out of the chart's points and period (``undated``). A moment held without a time
zone is kept as held (its wall-clock time, counted as if it were UTC) and its chart says
``naive``: the index then writes it as held, never converted to a zone it may not be in.
Values are numbers, ``Decimal`` included; cells are text (``datetime``, ``date`` in ISO
8601, ``Decimal`` as written).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from operator import itemgetter
from typing import Any

import orjson

from connectors.items import Dataset, Series
from jobs.archive.formats import dumps

PREVIEW_ROWS = 10
PREVIEW_COLUMNS = 12
CELL_CHARS = 80
SERIES_POINTS = 120
SERIES_CHARTED = 8
#: The moments a ``datetime`` can hold, in Unix seconds (within the years 1 to 9999).
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_LATEST = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def cell(value: Any) -> str:
    """A value as the preview's table shows it: text, cut at :data:`CELL_CHARS`."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool | float):
        text = orjson.dumps(value).decode()
    elif isinstance(value, int | Decimal):  # an int of any size, as the data file has it
        text = str(value)
    elif isinstance(value, date):  # a datetime too
        text = value.isoformat()
    else:  # as the data files write it (bytes, sets, keys that are not text…)
        text = dumps(value).decode()
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def moment(value: Any) -> tuple[float | None, bool]:
    """A reading's moment in Unix seconds (None: no moment) and whether it was held
    without a time zone (its wall-clock time then counted as if it were UTC)."""
    if isinstance(value, bool):
        return None, False
    if isinstance(value, int | float | Decimal):
        seconds = float(value)
        return (seconds if _EARLIEST <= seconds <= _LATEST else None), False
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None, False
    elif isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime.combine(value, time())
    else:
        return None, False
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC).timestamp(), True
    return when.timestamp(), False


def _moments(
    rows: Sequence[Mapping[str, Any]], column: str
) -> tuple[Sequence[float | None], float | None, float | None, int, bool]:
    """Each row's moment, the earliest and latest, how many rows have none, and whether
    any was held without a time zone.

    The common case, every row's moment a number of seconds, is read at C speed (no
    call per row).
    """
    try:
        held = list(map(itemgetter(column), rows))
        low, high = min(held), max(held)
    except (KeyError, TypeError, ValueError):
        pass
    else:  # numbers and text (or None) do not compare: both numbers means all are
        if _is_number(low) and _is_number(high) and low >= _EARLIEST and high <= _LATEST:
            return held, float(low), float(high), 0, False
    read = [moment(row.get(column)) for row in rows]
    times = [seconds for seconds, _ in read]
    naive = any(without_zone for seconds, without_zone in read if seconds is not None)
    dated = [t for t in times if t is not None]
    if not dated:
        return times, None, None, len(times), False
    return times, min(dated), max(dated), len(times) - len(dated), naive


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return round(float(value), 4)


class _Chart:
    """One series: its readings counted, its period, one point every ``stride`` readings."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.readings = 0
        self.undated = 0
        self.first: float | None = None
        self.last: float | None = None
        self.stride = 1
        self.naive = False
        self.points: list[list[float | None]] = []

    def add(self, rows: Sequence[Mapping[str, Any]], series: Series) -> None:
        times, low, high, undated, naive = _moments(rows, series.time)
        self.undated += undated
        self.naive = self.naive or naive
        if low is not None and high is not None:
            self.first = low if self.first is None else min(self.first, low)
            self.last = high if self.last is None else max(self.last, high)
        start = (-self.readings) % self.stride
        self.readings += len(rows)
        for index in range(start, len(rows), self.stride):
            when = times[index]
            if when is not None:
                row = rows[index]
                self.points.append([float(when), *(_number(row.get(v)) for v in series.values)])
        while len(self.points) > SERIES_POINTS:
            self.points = self.points[::2]
            self.stride *= 2

    def result(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "readings": self.readings,
            "undated": self.undated,
            "first": self.first,
            "last": self.last,
            "stride": self.stride,
            "naive": self.naive,
            "points": self.points,
        }


def _buckets(rows: Sequence[Mapping[str, Any]], by: str) -> dict[Any, list[int]]:
    """The rows' indices by their ``by`` value, in one pass, keys in order of appearance."""
    try:
        keys = list(map(itemgetter(by), rows))
    except KeyError:
        keys = [row.get(by) for row in rows]
    buckets: dict[Any, list[int]] = {}
    try:
        for index, key in enumerate(keys):
            buckets.setdefault(key, []).append(index)
    except TypeError:  # a value that cannot be a dict key (a list, say): by its text
        buckets.clear()
        for index, key in enumerate(keys):
            buckets.setdefault(None if key is None else str(key), []).append(index)
    return buckets


class Gatherer:
    """The preview of one dataset, built from its rows as staging renders them."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._columns: list[str] = list(dataset.fields)
        self._rows: list[Mapping[str, Any]] = []
        self._charts: dict[str | None, _Chart] = {}
        self._not_charted = 0

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Look at a batch of the dataset's rows, in order."""
        if len(self._rows) < PREVIEW_ROWS:
            self._rows.extend(rows[: PREVIEW_ROWS - len(self._rows)])
        series = self.dataset.series
        if series is None:
            return
        if series.by is None:
            self._charts.setdefault(None, _Chart(None)).add(rows, series)
            return
        for key, indices in _buckets(rows, series.by).items():
            chart = self._chart(None if key is None else str(key))
            if chart is None:
                self._not_charted += len(indices)
            elif len(indices) == len(rows):
                chart.add(rows, series)
            else:
                chart.add([rows[index] for index in indices], series)

    def _chart(self, key: str | None) -> _Chart | None:
        """The chart of series ``key``; None once :data:`SERIES_CHARTED` others have one."""
        chart = self._charts.get(key)
        if chart is None and len(self._charts) < SERIES_CHARTED:
            chart = self._charts[key] = _Chart(key)
        return chart

    def result(self) -> dict[str, Any]:
        """The preview (the module's docstring draws its shape)."""
        columns = self._columns or list(dict.fromkeys(k for row in self._rows for k in row))
        shown = columns[:PREVIEW_COLUMNS]
        preview: dict[str, Any] = {
            "columns": shown,
            "rows": [[cell(row.get(column)) for column in shown] for row in self._rows],
            "columns_left_out": len(columns) - len(shown),
        }
        series = self.dataset.series
        if series is not None:
            preview["series"] = {
                "time": series.time,
                "values": list(series.values),
                "by": series.by,
                "charts": [chart.result() for chart in self._charts.values()],
                "readings_not_charted": self._not_charted,
            }
        return preview


__all__ = ["CELL_CHARS", "PREVIEW_COLUMNS", "PREVIEW_ROWS", "SERIES_POINTS", "Gatherer", "cell"]
