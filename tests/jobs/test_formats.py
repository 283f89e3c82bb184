"""Dataset renderings: json, ndjson and csv, batch by batch."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

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
