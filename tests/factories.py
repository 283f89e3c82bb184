"""Job options as the commands make them, for tests that build jobs by hand."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.model import ErasureOptions, ExportOptions, ExportScope, JobKind, Options


def options_for(kind: JobKind, formats: Sequence[str] = ("json",)) -> Options:
    """The options of a plain request of ``kind``: an export of everything, or an erasure."""
    if kind is JobKind.EXPORT:
        scope = ExportScope(connectors="all", categories="all", left_out=[])
        return ExportOptions(formats=list(formats), scope=scope)
    return ErasureOptions.model_validate({"kind": kind.value})
