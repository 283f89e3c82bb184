"""Handover's connector SDK: what an integrator imports to add a processor.

Everything public is listed in ``__all__``; a test keeps it from drifting.
"""

from connectors.base import Connector
from connectors.errors import (
    ConnectorError,
    ConnectorLoadError,
    PermanentError,
    RateLimited,
    TransientError,
    Unidentified,
)
from connectors.items import (
    Batch,
    Dataset,
    File,
    Item,
    Period,
    Record,
    Records,
    Series,
    Subject,
)
from connectors.reports import (
    DatasetErasure,
    ErasureReport,
    FieldChange,
    FieldRectification,
    ObjectionReport,
    PurposeObjection,
    Rectifiable,
    RectificationReport,
    RestrictionReport,
    RetentionRule,
)

__all__ = [
    "Batch",
    "Connector",
    "ConnectorError",
    "ConnectorLoadError",
    "Dataset",
    "DatasetErasure",
    "ErasureReport",
    "FieldChange",
    "FieldRectification",
    "File",
    "Item",
    "ObjectionReport",
    "Period",
    "PermanentError",
    "PurposeObjection",
    "RateLimited",
    "Record",
    "Records",
    "Rectifiable",
    "RectificationReport",
    "RestrictionReport",
    "RetentionRule",
    "Series",
    "Subject",
    "TransientError",
    "Unidentified",
]
