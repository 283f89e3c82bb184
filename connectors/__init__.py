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
from connectors.items import Dataset, File, Item, Record, Subject
from connectors.reports import DatasetErasure, ErasureReport, RestrictionReport, RetentionRule

__all__ = [
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
    "RestrictionReport",
    "RetentionRule",
    "Subject",
    "TransientError",
    "Unidentified",
]
