"""Job options as the commands make them, and configuration files, for tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from connectors.registry import ConnectorConfig
from jobs.model import (
    DisclosureOptions,
    DisclosureOrder,
    ErasureOptions,
    ExportOptions,
    ExportScope,
    FieldRef,
    JobKind,
    LiftOptions,
    ObjectionOptions,
    Options,
    RectificationOptions,
    StagedPart,
    utcnow,
)


def staged_part(path: str = "crm/contacts.json", **fields: Any) -> StagedPart:
    """One archive file as a run records it staged (``connector/dataset.format``);
    ``fields`` replace the defaults."""
    connector, _, name = path.partition("/")
    dataset, _, extension = name.rpartition(".")
    defaults: dict[str, Any] = {
        "path": path,
        "connector": connector,
        "dataset": dataset,
        "category": "contact",
        "format": extension,
        "records": 1,
        "bytes": 10,
        "sha256": "ab" * 32,
        "crc32": 1,
        "compressed_size": 12,
        "chunks": [(0, 12)],
    }
    return StagedPart(**{**defaults, **fields})


def options_for(kind: JobKind, formats: Sequence[str] = ("json",)) -> Options:
    """The options of a plain request of ``kind``: an export of everything, an erasure, an
    objection to direct marketing, a rectification of a contact's name, a lift, or a
    disclosure of everything to a court, the subject told at once."""
    if kind in (JobKind.EXPORT, JobKind.DISCLOSURE):
        scope = ExportScope(connectors="all", categories="all", left_out=[])
        export = ExportOptions(formats=list(formats), scope=scope)
        if kind is JobKind.EXPORT:
            return export
        order = DisclosureOrder(authority="a court", reference="R-1", legal_basis="art. 1")
        return DisclosureOptions(export=export, order=order, notice="now")
    if kind is JobKind.OBJECTION:
        return ObjectionOptions(purposes=["direct_marketing"])
    if kind is JobKind.LIFT:
        return LiftOptions(
            restriction="01JD2Z6S41ABCDEFGHJKMNPQRS", reason="verified", lifts_at=utcnow()
        )
    if kind is JobKind.RECTIFICATION:
        return RectificationOptions(
            changes=[FieldRef(connector="crm", dataset="contacts", field="name")]
        )
    return ErasureOptions.model_validate({"kind": kind.value})


def toml_value(value: object) -> str:
    """``value`` as a TOML value (inline tables and arrays; strings JSON-escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        fields = (f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(fields) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def connectors_toml(configs: Sequence[ConnectorConfig]) -> str:
    """A ``HANDOVER_CONFIG`` file's ``[connectors.*]`` tables for ``configs``."""
    lines = []
    for config in configs:
        lines.append(f"[connectors.{config.name}]")
        lines.append(f"type = {toml_value(config.type)}")
        lines += [f"{key} = {toml_value(value)}" for key, value in config.options.items()]
    return "\n".join(lines) + "\n"
