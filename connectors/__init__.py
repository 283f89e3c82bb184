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
from connectors.items import Batch, Dataset, File, Item, Record, Records, Subject
from connectors.reports import DatasetErasure, ErasureReport, RestrictionReport, RetentionRule

__all__ = [
    "Batch",
    "Connector",
    "ConnectorError",
    "ConnectorLoadError",
    "Dataset",
    "DatasetErasure",
    "ErasureReport",
    "File",
    "Item",
    "PermanentError",
    "RateLimited",
    "Record",
    "Records",
    "RestrictionReport",
    "RetentionRule",
    "Subject",
    "TransientError",
    "Unidentified",
]
