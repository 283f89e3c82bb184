"""The request kinds Handover serves, and the pipeline that does each kind's work.

A request kind is a command set (:mod:`jobs.commands`), a pipeline (the work) and
a connector capability (``export``, ``erase``, ``restrict``, ``object``, ``rectify``,
``lift_restriction``).
This table is where a new kind's pipeline is registered; the worker and the commands both
read it.
"""

from __future__ import annotations

from jobs.erasure import ErasurePipeline
from jobs.export import ExportPipeline
from jobs.lift import LiftPipeline
from jobs.model import JobKind
from jobs.objection import ObjectionPipeline
from jobs.pipeline import Pipeline, RetryPolicy
from jobs.rectification import RectificationPipeline
from jobs.resources import Resources

PIPELINES: tuple[type[Pipeline], ...] = (
    ExportPipeline,
    ErasurePipeline,
    ObjectionPipeline,
    RectificationPipeline,
    LiftPipeline,
)


def build_pipelines(
    resources: Resources, retry_policy: RetryPolicy | None = None
) -> dict[JobKind, Pipeline]:
    """One pipeline per job kind over shared resources."""
    built: dict[JobKind, Pipeline] = {}
    for cls in PIPELINES:
        instance = cls(resources, retry_policy)
        built.update({kind: instance for kind in cls.kinds})
    return built
