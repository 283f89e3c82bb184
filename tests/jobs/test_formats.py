"""Dataset renderings: json, ndjson and csv, batch by batch."""

from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import enum
import io
import json
import tracemalloc
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from connectors.errors import PermanentError
from jobs.archive.formats import (
    FORMATS,
    RENDERERS,
    CsvRenderer,
    JsonRenderer,
    NdjsonRenderer,
    Renderer,
    dumps,
)

RECORDS = [
    {"id": 1, "email": "alice@example.com", "plan": "pro"},
    {"id": 2, "email": "bob@example.com", "plan": "free"},
    {"id": 3, "email": 'carol, "the" admin\nsecond line', "plan": "team"},
    {"id": 4, "email": "dana@example.com", "plan": "free"},
    {"id": 5, "email": "émile@example.com", "plan": "pro"},
]
BATCHES = [RECORDS[:2], [], RECORDS[2:3], RECORDS[3:]]


@pytest.fixture
def render() -> Callable[..., bytes]:
    """Runs a renderer over batches: begin, every render, end, concatenated."""

    def run(
        fmt: str,
        batches: Sequence[Sequence[Mapping[str, Any]]],
        *,
        fields: Sequence[str] = (),
        dataset: str = "contacts",
    ) -> bytes:
        renderer = RENDERERS[fmt](dataset, fields)
        out = renderer.begin()
        for batch in batches:
            out += renderer.render(batch)
        return out + renderer.end()

    return run


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def test_registry_covers_every_format() -> None:
    assert set(RENDERERS) == set(FORMATS)
    assert RENDERERS["json"] is JsonRenderer
    assert RENDERERS["ndjson"] is NdjsonRenderer
    assert RENDERERS["csv"] is CsvRenderer
    assert all(issubclass(cls, Renderer) for cls in RENDERERS.values())


def test_json_round_trips_over_batches(render: Callable[..., bytes]) -> None:
    assert json.loads(render("json", BATCHES)) == RECORDS


def test_json_puts_one_object_a_line(render: Callable[..., bytes]) -> None:
    lines = render("json", BATCHES).decode().splitlines()

    assert lines[0] == "["
    assert lines[-1] == "]"
    assert [json.loads(line.rstrip(",")) for line in lines[1:-1]] == RECORDS


@pytest.mark.parametrize("batches", [[], [[]], [[], []]])
def test_json_of_an_empty_dataset_is_an_empty_array(
    render: Callable[..., bytes], batches: list[list[dict[str, Any]]]
) -> None:
    assert json.loads(render("json", batches)) == []


def test_ndjson_round_trips_over_batches(render: Callable[..., bytes]) -> None:
    data = render("ndjson", BATCHES)

    assert data.endswith(b"\n")
    assert [json.loads(line) for line in data.decode().splitlines()] == RECORDS


def test_ndjson_of_an_empty_dataset_is_empty(render: Callable[..., bytes]) -> None:
    assert render("ndjson", [[]]) == b""


def test_renderers_count_records() -> None:
    for fmt in FORMATS:
        renderer = RENDERERS[fmt]("contacts")
        for batch in BATCHES:
            renderer.render(batch)
        assert renderer.count == len(RECORDS), fmt


def test_csv_round_trips_over_batches(render: Callable[..., bytes]) -> None:
    data = render("csv", BATCHES)

    assert data.startswith(b"id,email,plan\r\n")
    expected = [{key: str(value) for key, value in record.items()} for record in RECORDS]
    assert csv_rows(data) == expected


def test_csv_header_follows_declared_fields(render: Callable[..., bytes]) -> None:
    fields = ("plan", "id", "email", "phone")
    data = render("csv", BATCHES, fields=fields)

    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    assert next(reader) == list(fields)
    rows = csv_rows(data)
    assert [row["id"] for row in rows] == [str(record["id"]) for record in RECORDS]
    assert {row["phone"] for row in rows} == {""}


def test_csv_header_comes_from_the_first_record_without_fields(
    render: Callable[..., bytes],
) -> None:
    batches = [[], [{"b": 1, "a": 2}], [{"a": 3}]]
    data = render("csv", batches)

    assert data.splitlines()[0] == b"b,a"
    assert csv_rows(data) == [{"b": "1", "a": "2"}, {"b": "", "a": "3"}]


def test_csv_refuses_an_undeclared_field_naming_it() -> None:
    renderer = CsvRenderer("contacts", ("id", "email"))
    renderer.render([{"id": 1, "email": "a@example.com"}])

    with pytest.raises(PermanentError, match="contacts") as raised:
        renderer.render([{"id": 2, "email": "b@example.com", "ssn": "123", "age": 40}])

    assert "ssn" in str(raised.value)
    assert "age" in str(raised.value)
    assert "email" not in str(raised.value)
    assert renderer.count == 1


def test_csv_refuses_a_field_missing_from_the_first_record() -> None:
    renderer = CsvRenderer("visits")

    with pytest.raises(PermanentError, match="late_field"):
        renderer.render([{"id": 1}, {"id": 2, "late_field": True}])


def test_csv_cells_for_every_kind_of_value() -> None:
    when = datetime(2024, 5, 17, 13, 45, 59, 123000, tzinfo=UTC)
    record = {
        "none": None,
        "yes": True,
        "no": False,
        "int": 42,
        "float": 1.5,
        "decimal": Decimal("19.90"),
        "when": when,
        "day": date(2024, 2, 29),
        "nested": {"city": "Lyon", "tags": ["a", "b"]},
        "list": [1, None, True],
        "text": "plain",
    }
    renderer = CsvRenderer("mixed")
    [row] = csv_rows(renderer.render([record]))

    assert row == {
        "none": "",
        "yes": "true",
        "no": "false",
        "int": "42",
        "float": "1.5",
        "decimal": "19.90",
        "when": "2024-05-17T13:45:59.123000+00:00",
        "day": "2024-02-29",
        "nested": row["nested"],
        "list": "[1,null,true]",
        "text": "plain",
    }
    assert json.loads(row["nested"]) == {"city": "Lyon", "tags": ["a", "b"]}


def test_csv_bytes_cell_matches_the_json_rendering(render: Callable[..., bytes]) -> None:
    record = {"avatar": b"\x89PNG\r\n\x1a\n"}
    [row] = csv_rows(render("csv", [[record]]))
    [from_json] = json.loads(render("json", [[record]]))

    assert from_json["avatar"] == base64.b64encode(record["avatar"]).decode()
    assert row["avatar"] == from_json["avatar"]


def test_dumps_encodes_what_connectors_return() -> None:
    value = {
        "amount": Decimal("10.50"),
        "blob": b"\x00\xff",
        "tags": {"x"},
        "pair": (1, 2),
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "none": None,
        7: "non-string key",
    }

    assert json.loads(dumps(value)) == {
        "amount": "10.50",
        "blob": base64.b64encode(b"\x00\xff").decode(),
        "tags": ["x"],
        "pair": [1, 2],
        "when": "2024-01-02T03:04:05+00:00",
        "none": None,
        "7": "non-string key",
    }


def test_dumps_refuses_an_unserialisable_object() -> None:
    class Opaque:
        pass

    with pytest.raises(PermanentError, match="not serialisable.*Opaque"):
        dumps({"thing": Opaque()})


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_json_renderers_refuse_an_unserialisable_record(fmt: str) -> None:
    with pytest.raises(PermanentError, match="not serialisable"):
        RENDERERS[fmt]("odd").render([{"thing": object()}])


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Key(str):
    """A text key of a subclass: plain orjson refuses it, the generic encoder writes it."""


# Every kind of value a connector may hand over, each in a record of its own; the fast
# path (plain orjson) must write exactly what the generic encoder writes, or give way.
VALUES: dict[str, Any] = {
    "text": 'é, "quoted", \\, \n, \u2028, \U0001f600 and \x00',
    "int": -(2**63),
    "largest int": 2**64 - 1,
    "float": -0.0,
    "tiny float": 5e-324,
    "nan": float("nan"),
    "infinity": float("-inf"),
    "bool": True,
    "none": None,
    "list": [1, "two", [3.0, None]],
    "tuple": (1, (2, 3)),
    "nested": {"a": {"b": {"c": []}}},
    "ordered": collections.OrderedDict(b=1, a=2),
    "naive datetime": datetime(2024, 1, 2, 3, 4, 5, 678901),
    "aware datetime": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    "other zone": datetime(2024, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    "date": date(2024, 2, 29),
    "time": time(23, 59, 59, 1),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "enum": Colour.RED,
    "dataclass": Point(1, 2.5),
    "decimal": Decimal("-0.10"),
    "decimal exponent": Decimal("1E+3"),
    "bytes": b"\x00\xff",
    "set": {3, 1, 2},
    "frozenset": frozenset({"x"}),
    "tuple of bytes": (b"a",),
    "int key": {1: "one"},
    "bool key": {True: "yes"},
    "subclass key": {Key("k"): "v"},
}


def generic(fmt: str, batches: Sequence[Sequence[Mapping[str, Any]]]) -> bytes:
    """What :func:`dumps` alone, record by record, makes of every batch: the reference."""
    records = [record for batch in batches for record in batch]
    if fmt == "ndjson":
        return b"".join(dumps(record) + b"\n" for record in records)
    if not records:
        return b"[]\n"
    return b"[\n" + b",\n".join(dumps(record) for record in records) + b"\n]\n"


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
@pytest.mark.parametrize("kind", VALUES)
def test_the_fast_path_writes_what_the_generic_encoder_writes(
    render: Callable[..., bytes], fmt: str, kind: str
) -> None:
    plain = {"id": 1, "email": "alice@example.com"}
    record = {"id": 2, "value": VALUES[kind], **{kind: "as a key"}}
    batches = [[plain, plain], [plain, record, plain], [record], [plain]]

    assert render(fmt, batches) == generic(fmt, batches)


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_rendering_a_batch_holds_little_more_than_its_bytes(fmt: str) -> None:
    """orjson's output pins ~4 KB while it lives: a batch must not keep a list of them."""
    batch = [{"seq": n, "note": f"reading {n} " + "x" * 480} for n in range(2000)]
    renderer = RENDERERS[fmt]("telemetry")
    renderer.render(batch[:1])  # past the first batch's lead
    tracemalloc.start()
    try:
        rendered = renderer.render(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(rendered), f"{peak / len(rendered):.1f} times the batch's bytes"


def test_a_batch_plain_orjson_refuses_is_the_only_one_given_way() -> None:
    renderer = NdjsonRenderer("contacts")
    plain = [{"id": n} for n in range(3)]
    assert renderer.render(plain) == b"".join(orjson.dumps(r) + b"\n" for r in plain)
    with pytest.raises(TypeError):
        orjson.dumps({"amount": Decimal("1.5")})
    assert renderer.render([*plain, {"amount": Decimal("1.5")}]).endswith(b'{"amount":"1.5"}\n')


FORMULAS = ['=HYPERLINK("http://x.example","y")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_csv_neutralises_formula_cells_and_column_names(render: Callable[..., bytes]) -> None:
    record = {"=cmd": FORMULAS[0], "plain": "safe text"}
    record |= {f"c{i}": formula for i, formula in enumerate(FORMULAS[1:])}
    data = render("csv", [[record]])

    [header, row] = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert header[0] == "'=cmd"
    assert row == ["'" + FORMULAS[0], "safe text", *("'" + f for f in FORMULAS[1:])]
    assert data.decode().split("\r\n")[1] == (
        '"\'=HYPERLINK(""http://x.example"",""y"")",safe text,'
        + '"\'+1+1","\'-2+3","\'@SUM(A1)","\'\t=1","\'\r=1"'
    )


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (-3.5, "-3.5"),
        (-7, "-7"),
        (Decimal("-19.90"), "-19.90"),
        (-1e-25, "-1e-25"),
        (-1e25, "-1e+25"),
        ("-3.5", "'-3.5"),
        ("+33 6 12 34 56 78", "'+33 6 12 34 56 78"),
        (Decimal("-Infinity"), "'-Infinity"),
        ({"a": "=1"}, '{"a":"=1"}'),
        (["=1"], '["=1"]'),
        (True, "true"),
        ("O'Brien", "O'Brien"),
        ("'=already marked", "'=already marked"),
    ],
)
def test_csv_leaves_numbers_as_data_and_neutralises_the_rest(
    render: Callable[..., bytes], value: object, cell: str
) -> None:
    [row] = csv_rows(render("csv", [[{"value": value}]]))
    assert row == {"value": cell}


def test_csv_lone_empty_cell_is_not_a_blank_line(render: Callable[..., bytes]) -> None:
    data = render("csv", [[{"note": None}, {"note": ""}]])

    assert data == b'note\r\n""\r\n""\r\n'
    assert csv_rows(data) == [{"note": ""}, {"note": ""}]
