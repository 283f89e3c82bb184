"""A Handover connector for Lumen, a fictional CRM: the worked example of a third-party package."""

from handover_example_crm.connector import ExampleCrmConnector

__all__ = ["ExampleCrmConnector"]
