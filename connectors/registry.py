"""Finding connector types (entry points) and building the configured instances.

Connector types are published in the ``handover.connectors`` entry-point group,
built-ins exactly like third-party packages. Discovery lists the entry points
first and imports one only when configuration asks for its type, so a broken
plugin nobody uses costs nothing, and one that is used fails with a
:class:`~connectors.errors.ConnectorLoadError` naming its distribution.

Names become paths inside the archive (``<connector>/<dataset>.json``), so both
follow one rule, :data:`connectors.items.NAME`: a connector's name is checked here,
for every connector built from configuration, and a dataset's name where it is
declared (:class:`~connectors.items.Dataset`, configured datasets such as an
``http`` connector's included). Either stops the build with one line naming the
connector and the name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from connectors.base import Connector
from connectors.errors import ConnectorLoadError
from connectors.items import check_name

ENTRY_POINT_GROUP = "handover.connectors"
#: Options every connector accepts: the Art. 15(1) information about its processing.
PROCESSING_FIELDS = ("purposes", "legal_basis", "recipient", "retention", "source", "transfer")


@dataclass(frozen=True)
class ConnectorConfig:
    """One configured connector: its instance name, its type and the type's options."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)


def available_types() -> dict[str, EntryPoint]:
    """Every connector type published in the entry-point group, not yet imported."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_type(type_name: str, types: Mapping[str, EntryPoint] | None = None) -> type[Connector]:
    """Import the class behind ``type_name``."""
    types = available_types() if types is None else types
    entry_point = types.get(type_name)
    if entry_point is None:
        known = ", ".join(sorted(types)) or "none"
        raise ConnectorLoadError(f"unknown connector type {type_name!r} (installed: {known})")
    distribution = entry_point.dist.name if entry_point.dist else "unknown distribution"
    try:
        loaded = entry_point.load()
    except Exception as exc:
        raise ConnectorLoadError(
            f"connector type {type_name!r} from {distribution} failed to import: {exc}"
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Connector)):
        raise ConnectorLoadError(
            f"connector type {type_name!r} from {distribution} is not a Connector subclass"
        )
    return loaded


def build_connectors(configs: list[ConnectorConfig]) -> dict[str, Connector]:
    """Instantiate every configured connector, in configuration order."""
    types = available_types()
    built: dict[str, Connector] = {}
    for config in configs:
        try:
            check_name("connector", config.name)
        except ValueError as exc:
            raise ConnectorLoadError(str(exc)) from None
        cls = load_type(config.type, types)
        options = {k: v for k, v in config.options.items() if k not in PROCESSING_FIELDS}
        processing = {k: str(v) for k, v in config.options.items() if k in PROCESSING_FIELDS}
        try:
            connector = cls(config.name, **options)
        except Exception as exc:
            raise ConnectorLoadError(
                f"connector {config.name!r} could not be built: {exc}"
            ) from exc
        if processing:
            connector.processing = {**connector.processing, **processing}
        built[config.name] = connector
    return built
