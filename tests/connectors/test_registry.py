"""Discovery through entry points, and the errors a bad plugin or configuration gives."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from connectors import ConnectorLoadError
from connectors.base import Connector
from connectors.byhand import EmailConnector, ManualConnector
from connectors.google_analytics import GoogleAnalyticsConnector
from connectors.hotjar import HotjarConnector
from connectors.http import HttpConnector
from connectors.hubspot import HubSpotConnector
from connectors.items import Dataset
from connectors.registry import (
    ENTRY_POINT_GROUP,
    ConnectorConfig,
    available_types,
    build_connectors,
    load_type,
)
from connectors.s3files import S3FilesConnector
from connectors.sql import SqlConnector
from connectors.testing import MemoryConnector, SyntheticConnector


@dataclass(frozen=True)
class Plugin:
    """A tiny third-party distribution installed with pip, with one entry point per flaw."""

    distribution: str
    module: str
    broken: str
    not_a_connector: str
    fussy: str
    working: str


PLUGIN_MODULES = {
    "broken.py": """
        import acme_sdk_that_is_not_installed  # noqa: F401
    """,
    "thing.py": """
        class Thing:
            '''Not a connector.'''
    """,
    "fussy.py": """
        from connectors import Connector

        class Fussy(Connector):
            '''Refuses every configuration.'''

            def __init__(self, name, **options):
                raise ValueError("api_key is required")

            async def export(self, subject):
                yield

            async def erase(self, subject, *, dry_run, retention):
                raise NotImplementedError
    """,
}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """Builds the plugin and pip-installs it into a directory put on ``sys.path``.

    A directory of this process only: other test runs sharing the venv never see
    the broken plugin.
    """
    tag = uuid.uuid4().hex[:8]
    plugin = Plugin(
        distribution=f"handover-flawed-plugin-{tag}",
        module=f"flawed_plugin_{tag}",
        broken=f"broken-{tag}",
        not_a_connector=f"thing-{tag}",
        fussy=f"fussy-{tag}",
        working=f"working-{tag}",
    )
    source = tmp_path_factory.mktemp("plugin-source")
    package = source / plugin.module
    package.mkdir()
    (package / "__init__.py").write_text('"""A plugin with flaws."""\n')
    for name, code in PLUGIN_MODULES.items():
        (package / name).write_text(textwrap.dedent(code))
    (source / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{plugin.distribution}"
            version = "1.0"

            [tool.setuptools]
            packages = ["{plugin.module}"]

            [project.entry-points."{ENTRY_POINT_GROUP}"]
            {plugin.broken} = "{plugin.module}.broken:Connector"
            {plugin.not_a_connector} = "{plugin.module}.thing:Thing"
            {plugin.fussy} = "{plugin.module}.fussy:Fussy"
            {plugin.working} = "connectors.testing:MemoryConnector"
            """
        )
    )
    site = tmp_path_factory.mktemp("plugin-site")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    sys.path.insert(0, str(site))
    try:
        yield plugin
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.startswith(plugin.module)]:
            del sys.modules[name]


def test_built_ins_register_through_the_entry_point_group() -> None:
    types = available_types()
    built_in = {
        "sql": SqlConnector,
        "http": HttpConnector,
        "s3files": S3FilesConnector,
        "hubspot": HubSpotConnector,
        "hotjar": HotjarConnector,
        "google-analytics": GoogleAnalyticsConnector,
        "email": EmailConnector,
        "manual": ManualConnector,
    }
    for name, cls in built_in.items():
        dist = types[name].dist
        assert dist is not None and dist.name == "handover"
        assert load_type(name, types) is cls
    published = {ep.name for ep in types.values() if ep.dist and ep.dist.name == "handover"}
    assert published == set(built_in)  # the test connectors are no production types


def test_the_test_connectors_come_from_the_tests_only() -> None:
    types = available_types()
    for name, cls in {"memory": MemoryConnector, "synthetic": SyntheticConnector}.items():
        dist = types[name].dist
        assert dist is not None
        assert dist.name == "handover-test-connectors"
        assert load_type(name, types) is cls


def test_an_unknown_type_lists_the_installed_ones() -> None:
    with pytest.raises(ConnectorLoadError) as caught:
        load_type("salesforse")
    message = str(caught.value)
    assert message.startswith("unknown connector type 'salesforse' (installed: ")
    for name in ("memory", "s3files", "synthetic"):
        assert name in message


def test_a_plugin_that_fails_to_import_names_its_distribution(plugin: Plugin) -> None:
    with pytest.raises(ConnectorLoadError) as caught:
        build_connectors([ConnectorConfig("crm", plugin.broken)])
    assert str(caught.value) == (
        f"connector type {plugin.broken!r} from {plugin.distribution} failed to import: "
        "No module named 'acme_sdk_that_is_not_installed'"
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_a_broken_plugin_nobody_configures_costs_nothing(plugin: Plugin) -> None:
    types = available_types()
    assert {plugin.broken, plugin.not_a_connector, plugin.fussy} <= set(types)
    built = build_connectors([ConnectorConfig("crm", plugin.working, {"records": {}})])
    assert isinstance(built["crm"], MemoryConnector)
    assert f"{plugin.module}.broken" not in sys.modules


def test_a_class_that_is_no_connector_is_refused(plugin: Plugin) -> None:
    with pytest.raises(ConnectorLoadError) as caught:
        load_type(plugin.not_a_connector)
    assert str(caught.value) == (
        f"connector type {plugin.not_a_connector!r} from {plugin.distribution} "
        "is not a Connector subclass"
    )


def test_a_constructor_error_is_wrapped_naming_the_connector(plugin: Plugin) -> None:
    with pytest.raises(ConnectorLoadError) as caught:
        build_connectors([ConnectorConfig("billing", plugin.fussy, {"api_key": ""})])
    assert str(caught.value) == "connector 'billing' could not be built: api_key is required"
    assert isinstance(caught.value.__cause__, ValueError)


def test_an_unknown_option_is_wrapped_naming_the_connector() -> None:
    with pytest.raises(ConnectorLoadError, match="connector 'telemetry' could not be built: "):
        build_connectors([ConnectorConfig("telemetry", "synthetic", {"colour": "red"})])


def test_connectors_are_built_in_configuration_order() -> None:
    built = build_connectors(
        [
            ConnectorConfig("zeta", "memory"),
            ConnectorConfig("alpha", "synthetic", {"records": 3}),
            ConnectorConfig("mid", "memory"),
        ]
    )
    assert list(built) == ["zeta", "alpha", "mid"]
    assert [c.name for c in built.values()] == ["zeta", "alpha", "mid"]


def test_processing_information_is_taken_from_configuration() -> None:
    from connectors.registry import ConnectorConfig, build_connectors

    built = build_connectors(
        [
            ConnectorConfig(
                "crm",
                "memory",
                {
                    "records": {},
                    "purposes": "Customer support",
                    "legal_basis": "Art. 6(1)(b)",
                    "recipient": "Acme CRM Ltd",
                    "retention": "2 years",
                    "source": "the subject",
                },
            )
        ]
    )
    described = built["crm"].describe()
    assert described["purposes"] == "Customer support"
    assert described["recipient"] == "Acme CRM Ltd"
    assert described["legal_basis"] == "Art. 6(1)(b)"


@pytest.mark.parametrize("processor", [HubSpotConnector, GoogleAnalyticsConnector, HotjarConnector])
def test_a_us_processor_states_its_transfer_and_safeguards(processor: type[Connector]) -> None:
    transfer = processor.processing["transfer"]
    assert "USA" in transfer and "Art. 46(2)(c)" in transfer


def test_configuration_states_a_transfer_over_the_processors_own() -> None:
    from connectors.registry import ConnectorConfig, build_connectors

    own = ConnectorConfig("crm", "hubspot", {"token": "pat-eu1-0123456789"})
    stated = ConnectorConfig(
        "crm-eu", "hubspot", {"token": "pat-eu1-0123456789", "transfer": "None: EU data centre"}
    )
    built = build_connectors([own, stated])
    assert "Data Privacy Framework" in built["crm"].describe()["transfer"]
    assert built["crm-eu"].describe()["transfer"] == "None: EU data centre"
    assert built["crm-eu"].describe()["recipient"].startswith("HubSpot, Inc.")


BAD_NAMES = [
    "../../../../x",
    "..",
    "billing/invoices",
    "a\\b",
    "x.json",
    "",
    "-x",
    "x" * 64,
    "x\x00",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_connector_name_that_could_be_a_path_is_refused(name: str) -> None:
    with pytest.raises(ConnectorLoadError) as caught:
        build_connectors([ConnectorConfig(name, "memory")])
    assert str(caught.value) == (
        f"connector name {name!r} must be 1 to 63 letters, digits, - or _, "
        "starting with a letter or digit"
    )


@pytest.mark.parametrize("name", [name for name in BAD_NAMES if name])  # "": not text
def test_a_configured_dataset_name_that_could_be_a_path_is_refused(name: str) -> None:
    options = {
        "base_url": "https://api.example.com",
        "erase": {"path": "/users/{id}"},
        "datasets": [
            {"name": "tickets", "category": "contact", "path": "/users/{id}/tickets"},
            {"name": name, "category": "contact", "path": "/users/{id}/notes"},
        ],
    }
    with pytest.raises(ConnectorLoadError) as caught:
        build_connectors([ConnectorConfig("helpdesk", "http", options)])
    message = str(caught.value)
    assert message.startswith("connector 'helpdesk' could not be built: ")
    assert f"datasets[1] has a bad name: dataset name {name!r} must be" in message
    assert "\n" not in message


def test_a_dataset_named_by_records_is_checked_like_a_declared_one() -> None:
    records = {"alice": {"../../x": [{"id": 1}]}}
    with pytest.raises(ConnectorLoadError, match=r"connector 'crm' could not be built: dataset"):
        build_connectors([ConnectorConfig("crm", "memory", {"records": records})])


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_dataset_declared_in_code_with_a_path_for_a_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="dataset name .* must be 1 to 63 letters"):
        Dataset(name, "usage")


@pytest.mark.parametrize("name", ["a", "9", "user_lookup", "app-db", "Telemetry2", "x" * 63])
def test_names_of_letters_digits_dash_and_underscore_are_accepted(name: str) -> None:
    built = build_connectors([ConnectorConfig(name, "memory", {"records": {"a": {name: []}}})])
    assert [dataset.name for dataset in built[name].datasets] == [name]
