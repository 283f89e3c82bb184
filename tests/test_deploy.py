"""docker-compose.yml, the Dockerfile and deploy/ agree with the code they run.

No Docker engine runs here, so the files are read against the code, and their
command lines are run outside a container:

- the compose file: every ``HANDOVER_*`` variable is a setting, every command a
  ``handover`` command line, the configuration it mounts loads and builds its
  connectors, and ports, volumes, addresses and credentials agree between services;
- ``deploy/platform-seed.sql`` is what ``deploy/make-platform-seed.py`` makes from
  ``connectors/demo.py`` now, and it runs on the real PostgreSQL server;
- the ``signing-key``, ``api`` and ``worker`` command lines run as processes with the
  compose file's environment, its addresses pointed at this machine's Redis, moto's
  S3 and a fresh PostgreSQL database seeded from that file: alice's export comes out
  of the SQL connectors of ``deploy/handover.toml`` holding what ``handover serve``
  holds on her, and a dry-run erasure keeps her invoices under the retention rule;
- the Dockerfile: slim Python 3.11, a non-root user, ``handover`` as the entry
  point, a health check that asks a route the API serves, and a build context
  holding what the image copies.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import yaml
from aiohttp import ClientSession
from arq.connections import ArqRedis
from sqlalchemy.engine import make_url

from connectors.demo import DEMO_CONTROLLER, demo_connector_configs, seed_demo_database
from connectors.items import Record, Subject
from connectors.registry import PROCESSING_FIELDS, build_connectors, load_type
from jobs.settings import VARIABLES, Settings
from service.api.operations import OPERATIONS
from service.cli.main import _parser
from tests.conftest import REDIS_URL, free_port, wait_for_port
from tests.polling import eventually

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_FILE = ROOT / "deploy" / "handover.toml"
SEED_FILE = ROOT / "deploy" / "platform-seed.sql"
SEED_GENERATOR = ROOT / "deploy" / "make-platform-seed.py"

POSTGRES_URL = os.environ.get(
    "HANDOVER_TEST_POSTGRES_URL", "postgresql://handover:handover@127.0.0.1:5432/postgres"
)
SETTING_VARIABLES = {"HANDOVER_CONFIG", *VARIABLES}
# What the operator sets before `docker compose up` (the file's comment says so).
OPERATOR = {
    "HANDOVER_JWT_SECRET": "deploy-test-jwt-secret-" + "d" * 32,
    "MINIO_ROOT_PASSWORD": "deploy-test-minio-password",
}
ONE_SHOT = {"service_completed_successfully"}
CONDITIONS = {"service_started", "service_healthy"} | ONE_SHOT
PATH_SETTINGS = ("HANDOVER_CONFIG", "HANDOVER_SIGNING_KEY_FILE", "HANDOVER_DATA_DIR")


# -- reading the files ------------------------------------------------------------


class MissingVariable(Exception):
    """The compose file needs a variable the operator did not set."""


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>\w+)|\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\})"
)


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's ``$$``, ``$NAME``, ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        current = environ.get(match["name"] or match["bare"], "")
        if current:
            return current
        if match["op"] == ":-":
            return str(match["arg"])
        raise MissingVariable(f"{match['name'] or match['bare']}: {match['arg'] or 'not set'}")

    return _VARIABLE.sub(replace, value)


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def image_services() -> dict[str, dict[str, Any]]:
    """The services run from the image the Dockerfile builds."""
    return {name: s for name, s in services().items() if s.get("build") in (".", "./")}


def handover_services() -> dict[str, dict[str, Any]]:
    """The services that run a ``handover`` command (the image's own entry point)."""
    return {name: s for name, s in image_services().items() if "entrypoint" not in s}


def raw_environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def container_environment(
    service: Mapping[str, Any], operator: Mapping[str, str] = OPERATOR
) -> dict[str, str]:
    """What the container sees: the image's ENV, then the service's environment."""
    environment = dockerfile_env() if service.get("build") in (".", "./") else {}
    for name, value in raw_environment(service).items():
        environment[name] = interpolate(value, operator)
    return environment


@dataclass(frozen=True)
class Mount:
    source: str | None  # a named volume, a path in the repository, or None (anonymous)
    target: str
    read_only: bool

    @property
    def bind(self) -> bool:
        return self.source is not None and self.source.startswith((".", "/"))


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    found = []
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        found.append(Mount(parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    if service.get("build") in (".", "./"):
        targets = {mount.target for mount in found}
        found += [Mount(None, path, False) for path in dockerfile_volumes() if path not in targets]
    return found


def mount_of(service: Mapping[str, Any], path: str) -> Mount | None:
    """The mount ``path`` lies on in ``service``'s container, if any."""
    candidates = [
        m for m in mounts(service) if PurePosixPath(path).is_relative_to(PurePosixPath(m.target))
    ]
    return max(candidates, key=lambda m: len(m.target), default=None)


def published(service: Mapping[str, Any]) -> dict[int, int]:
    """Published ports: host port → container port."""
    ports = {}
    for entry in service.get("ports", []):
        *host, container = str(entry).split(":")
        ports[int(host[-1])] = int(container.split("/")[0])
    return ports


def option(command: list[str], name: str) -> str | None:
    if name in command:
        return command[command.index(name) + 1]
    return None


def dockerfile_instructions(final_stage: bool = True) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    instructions = [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]
    if final_stage:
        last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
        instructions = instructions[last_from:]
    return instructions


def dockerfile_values(instruction: str) -> list[str]:
    return [args for name, args in dockerfile_instructions() if name == instruction]


def dockerfile_env() -> dict[str, str]:
    environment = {}
    for args in dockerfile_values("ENV"):
        for pair in shlex.split(args):
            name, _, value = pair.partition("=")
            environment[name] = value
    return environment


def dockerfile_volumes() -> list[str]:
    volumes: list[str] = []
    for args in dockerfile_values("VOLUME"):
        volumes += json.loads(args) if args.startswith("[") else args.split()
    return volumes


def dockerfile_exec(instruction: str) -> list[str]:
    (args,) = dockerfile_values(instruction)
    command: list[str] = json.loads(args)  # the exec form: no shell in between
    return command


def healthcheck_command() -> list[str]:
    (args,) = dockerfile_values("HEALTHCHECK")
    _, _, command = args.partition(" CMD ")
    assert command, "HEALTHCHECK needs a CMD"
    check: list[str] = json.loads(command)
    return check


def platform_urls() -> set[str]:
    config = tomllib.loads(CONFIG_FILE.read_text())
    return {table["url"] for table in config["connectors"].values() if table.get("type") == "sql"}


# -- the compose file, read against the code ----------------------------------------


def test_every_handover_variable_is_a_setting() -> None:
    assert handover_services(), "no service runs the handover image"
    for name, service in image_services().items():
        variables = set(container_environment(service))
        unknown = {v for v in variables if v.startswith("HANDOVER_")} - SETTING_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)} are not Handover settings"
    unknown = {v for v in dockerfile_env() if v.startswith("HANDOVER_")} - SETTING_VARIABLES
    assert not unknown, f"Dockerfile: {sorted(unknown)} are not Handover settings"


def test_the_services_settings_load_and_build_their_connectors() -> None:
    for name, service in handover_services().items():
        environment = container_environment(service)
        mount = mount_of(service, environment["HANDOVER_CONFIG"])
        assert mount is not None and mount.bind, f"{name}: HANDOVER_CONFIG is not mounted"
        assert (ROOT / mount.source).resolve() == CONFIG_FILE  # type: ignore[operator]
        settings = Settings.load({**environment, "HANDOVER_CONFIG": str(CONFIG_FILE)})
        assert not settings.embedded_redis and settings.s3_bucket is not None, name
        assert settings.jwt_secret is not None and settings.signing_key_file is not None, name
        assert {c.name for c in settings.connectors} == {
            "profile",
            "devices",
            "billing",
            "newsletter",
        }
        for config in settings.connectors:
            load_type(config.type)
        built = build_connectors(list(settings.connectors))
        (rule,) = settings.retention
        kept = [
            (connector.name, dataset.name)
            for connector in built.values()
            for dataset in connector.datasets
            if rule.applies_to(connector.name, dataset.name, dataset.category)
        ]
        assert kept == [("billing", "invoices")], f"[retention.{rule.name}] keeps {kept}"


def test_the_secrets_have_no_defaults() -> None:
    for variable in OPERATOR:
        without = {k: v for k, v in OPERATOR.items() if k != variable}
        users = [s for s in services().values() if f"${{{variable}" in json.dumps(s)]
        assert users, variable
        for service in users:
            with pytest.raises(MissingVariable, match=variable):
                container_environment(service, without)
    api = container_environment(services()["api"])
    assert api["HANDOVER_JWT_SECRET"] == OPERATOR["HANDOVER_JWT_SECRET"]


def test_commands_are_handover_command_lines() -> None:
    parser = _parser()
    commands = {}
    for name, service in handover_services().items():
        command = service.get("command")
        assert isinstance(command, list), f"{name}: give the command as a list"
        try:
            commands[name] = parser.parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `handover {' '.join(command)}` is not a handover command line")
    assert commands["api"].command == "api" and commands["api"].host == "0.0.0.0"
    assert commands["worker"].command == "worker" and not commands["worker"].burst
    assert parser.parse_args(dockerfile_exec("CMD")).command == "serve"


def test_the_data_dir_and_signing_key_are_on_volumes() -> None:
    compose_volumes = set(compose().get("volumes") or {})
    key_files = set()
    for name, service in handover_services().items():
        environment = container_environment(service)
        data_mount = mount_of(service, environment["HANDOVER_DATA_DIR"])
        assert data_mount is not None and not data_mount.read_only, f"{name}: data dir"
        key_mount = mount_of(service, environment["HANDOVER_SIGNING_KEY_FILE"])
        assert key_mount is not None and key_mount.source in compose_volumes, (
            f"{name}: HANDOVER_SIGNING_KEY_FILE is not on a named volume"
        )
        key_files.add((key_mount.source, environment["HANDOVER_SIGNING_KEY_FILE"]))
    assert len(key_files) == 1, f"api and worker must share one signing key: {key_files}"
    ((volume, key_file),) = key_files
    # A configured key file must exist (jobs/resources.py): the one-shot makes it.
    maker = services()["signing-key"]
    assert maker.get("build") == "." and maker["command"] == [key_file]
    assert "Signer.from_file(" in " ".join(maker["entrypoint"]) and "create=True" in " ".join(
        maker["entrypoint"]
    )
    maker_mount = mount_of(maker, key_file)
    assert maker_mount is not None and maker_mount.source == volume and not maker_mount.read_only
    for name in handover_services():
        condition = services()[name]["depends_on"]["signing-key"]["condition"]
        assert condition == "service_completed_successfully", name


def test_depends_on_names_services_with_what_their_condition_needs() -> None:
    every = services()
    for name, service in every.items():
        for needed, how in service.get("depends_on", {}).items():
            assert needed in every, f"{name} depends on {needed}, which is not a service"
            assert how["condition"] in CONDITIONS, f"{name} → {needed}: {how['condition']}"
            dependency = every[needed]
            check = dependency.get("healthcheck", {})
            if how["condition"] == "service_healthy":
                has_check = ("test" in check and not check.get("disable")) or (
                    dependency.get("build") == "." and not check.get("disable")
                )
                assert has_check, f"{name} waits for {needed} to be healthy; it has no check"
            if how["condition"] in ONE_SHOT:
                assert dependency.get("restart") == "no", f"{needed} runs once: restart: 'no'"


def reachable(name: str) -> set[str]:
    """``name``'s dependencies, and theirs."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        for needed in services()[pending.pop()].get("depends_on", {}):
            if needed not in seen:
                seen.add(needed)
                pending.append(needed)
    return seen


def test_addresses_ports_and_credentials_agree() -> None:
    every = services()
    redis, minio, init, platform = (
        every[n] for n in ("redis", "minio", "minio-init", "platform-db")
    )
    redis_command = redis["command"]
    assert option(redis_command, "--appendonly") == "yes"
    assert option(redis_command, "--maxmemory-policy") == "noeviction"
    assert any(m.target == "/data" and m.source in compose()["volumes"] for m in mounts(redis))

    minio_port = int((option(minio["command"], "--address") or ":9000").rsplit(":", 1)[1])
    init_script = interpolate(" ".join(init["command"]), {**OPERATOR})
    alias = re.search(r"mc alias set (\S+) (\S+)", init_script)
    made = re.search(r"mc mb --ignore-existing (\S+)/(\S+)", init_script)
    assert alias and made and made[1] == alias[1], init_script
    minio_env = raw_environment(minio)
    assert raw_environment(init)["MINIO_ROOT_PASSWORD"] == minio_env["MINIO_ROOT_PASSWORD"]
    platform_env = raw_environment(platform)
    seeds = [m for m in mounts(platform) if m.target.startswith("/docker-entrypoint-initdb.d/")]
    assert [(ROOT / str(m.source)).resolve() for m in seeds] == [SEED_FILE]

    for name, service in handover_services().items():
        environment = raw_environment(service)
        redis_url = urlsplit(environment["HANDOVER_REDIS_URL"])
        assert (redis_url.hostname, redis_url.port) == ("redis", 6379)
        endpoint = urlsplit(environment["HANDOVER_S3_ENDPOINT_URL"])
        assert (endpoint.hostname, endpoint.port) == ("minio", minio_port)
        assert environment["HANDOVER_S3_ENDPOINT_URL"] == alias[2]
        assert environment["HANDOVER_S3_BUCKET"] == made[2], "minio-init makes another bucket"
        public = urlsplit(environment["HANDOVER_S3_PUBLIC_ENDPOINT_URL"])
        assert public.hostname in {"localhost", "127.0.0.1"}, "links are followed on the host"
        assert published(minio).get(public.port or 80) == minio_port
        assert environment["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
        assert environment["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
        assert environment["AWS_DEFAULT_REGION"] == "us-east-1"  # MinIO's default region
        needs = {"redis", "minio-init", "signing-key"}
        if service["command"][0] == "worker":
            needs.add("platform-db")
        assert needs <= reachable(name), f"{name} starts before {needs - reachable(name)}"
        assert "minio" in reachable(name)

    for url in platform_urls():
        parts = make_url(url)
        assert (parts.host, parts.port) == ("platform-db", 5432), url
        assert parts.username == platform_env["POSTGRES_USER"]
        assert parts.password == platform_env["POSTGRES_PASSWORD"]
        assert parts.database == platform_env["POSTGRES_DB"]

    api_port = int(option(every["api"]["command"], "--port") or 0)
    assert published(every["api"]) == {8080: api_port}
    host_ports = [port for service in every.values() for port in published(service)]
    assert len(host_ports) == len(set(host_ports)), f"a host port is published twice: {host_ports}"


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(compose().get("volumes") or {})
    used = set()
    for name, service in services().items():
        for mount in mounts(service):
            if mount.bind:
                assert (ROOT / str(mount.source)).exists(), f"{name}: {mount.source} is missing"
            elif mount.source is not None:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"
                used.add(mount.source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_the_config_serves_the_demo_connectors(tmp_path: Path) -> None:
    """deploy/handover.toml declares the tables `handover serve` declares (connectors/demo.py)."""
    deployed = Settings.load({"HANDOVER_CONFIG": str(CONFIG_FILE)}).connectors
    demo = demo_connector_configs(tmp_path / "demo.sqlite3")
    assert [(c.name, c.type) for c in deployed] == [(c.name, c.type) for c in demo]
    for ours, theirs in zip(deployed, demo, strict=True):
        expected = [dict(table) for table in theirs.options["tables"]]
        for table in expected:
            if table.get("anonymise", {}).get("email") == "hash":
                table["anonymise"] = {**table["anonymise"], "email": "null"}  # no hash_key here
        assert ours.options["tables"] == expected, ours.name
        assert ours.options.get("provides") == theirs.options.get("provides"), ours.name
        for field in PROCESSING_FIELDS:  # what the archive's index states (Art. 15)
            assert ours.options.get(field) == theirs.options.get(field), (ours.name, field)


def test_the_stack_states_the_demo_platforms_controller() -> None:
    """The index.html of the stack's archives names who `handover serve`'s demo names."""
    for name, service in handover_services().items():
        environment = container_environment(service)
        stated = {key: environment.get(f"HANDOVER_{key.upper()}") for key in DEMO_CONTROLLER}
        assert stated == DEMO_CONTROLLER, name


def test_the_platform_seed_is_made_from_the_demo_data_now() -> None:
    spec = importlib.util.spec_from_file_location("make_platform_seed", SEED_GENERATOR)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.render() == SEED_FILE.read_text(), (
        "deploy/platform-seed.sql is out of date with connectors/demo.py: "
        "run `.venv/bin/python deploy/make-platform-seed.py`"
    )


# -- the Dockerfile ---------------------------------------------------------------


def test_the_image_is_slim_non_root_and_runs_handover() -> None:
    (base,) = dockerfile_values("FROM")
    assert base.split()[0] == "python:3.11-slim"
    (user,) = dockerfile_values("USER")
    assert user.split(":")[0] not in {"root", "0"}
    names = [name for name, _ in dockerfile_instructions()]
    assert names.index("USER") < names.index("ENTRYPOINT")
    installs = [args for args in dockerfile_values("RUN") if "pip install" in args]
    assert installs and not any("[dev]" in args or "-e " in args for args in installs)
    # docker-compose's platform database is PostgreSQL: its driver is an extra.
    assert any("[postgres" in args for args in installs), installs
    assert dockerfile_exec("ENTRYPOINT") == ["handover"]
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "handover"]
    assert script.value == "service.cli.main:main"
    data_dir = dockerfile_env()["HANDOVER_DATA_DIR"]
    assert data_dir in dockerfile_volumes()
    key_dir = str(
        PurePosixPath(container_environment(services()["api"])["HANDOVER_SIGNING_KEY_FILE"]).parent
    )
    owned = [args for args in dockerfile_values("RUN") if "-o handover" in args]
    assert any(data_dir in args for args in owned) and any(key_dir in args for args in owned), (
        "the data dir and the key directory must belong to the image's user"
    )


def test_the_health_check_asks_a_route_the_api_serves() -> None:
    check = healthcheck_command()
    assert check[:2] == ["python", "-c"]
    url = urlsplit(re.findall(r"https?://[^'\"]+", check[2])[0])
    routes = {(op.method, op.path) for op in OPERATIONS if not op.auth}
    assert ("GET", url.path) in routes
    assert url.port == int(option(dockerfile_exec("CMD"), "--port") or 0)
    assert url.port == int(option(services()["api"]["command"], "--port") or 0)
    assert services()["worker"]["healthcheck"] == {"disable": True}


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    result = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        matches = any(
            fnmatch.fnmatchcase(prefix, glob)
            or (glob.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], glob[3:]))
            for prefix in prefixes
        )
        if matches:
            result = not negated
    return result


def test_the_build_context_holds_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for name, args in dockerfile_instructions(final_stage=False):
        if name == "COPY" and not args.startswith("--from"):
            copied += shlex.split(args)[:-1]
    assert copied
    for source in copied:
        files = (
            [source]
            if (ROOT / source).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        )
        kept_out = [f for f in files if ignored(f, patterns)]
        assert files and not kept_out, f".dockerignore keeps out {kept_out[:3]}"
    for unwanted in (".venv/bin/python", ".git/HEAD", ".handover/jwt-secret", "tests/conftest.py"):
        assert ignored(unwanted, patterns), unwanted
    assert ignored("service/__pycache__/cli.cpython-311.pyc", patterns)


# -- the stack's command lines, run outside a container ------------------------------


@pytest.fixture
def platform_database() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, seeded as platform-db seeds its own."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql (PostgreSQL's client) is not installed; `make services` installs it")
    name = f"handover_deploy_{uuid.uuid4().hex[:12]}"
    created = subprocess.run(
        [psql, "-X", "-q", "-d", POSTGRES_URL, "-c", f"CREATE DATABASE {name}"],
        capture_output=True,
        text=True,
    )
    if created.returncode != 0:
        pytest.fail(
            f"no PostgreSQL server usable at {make_url(POSTGRES_URL)!r}: {created.stderr.strip()};"
            " `make services` starts one"
        )
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        # As the postgres image runs /docker-entrypoint-initdb.d/*.sql.
        seeded = subprocess.run(
            [psql, "-X", "-v", "ON_ERROR_STOP=1", "--no-password", "-d", url, "-f", str(SEED_FILE)],
            capture_output=True,
            text=True,
        )
        assert seeded.returncode == 0, seeded.stderr
        yield url
    finally:
        subprocess.run(
            [
                psql,
                "-X",
                "-q",
                "-d",
                POSTGRES_URL,
                "-c",
                f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
            ],
            capture_output=True,
            check=True,
        )


@dataclass
class Outside:
    """Where the compose stack's addresses and volumes point when run on this machine."""

    root: Path
    config: Path
    redis_url: str
    s3_endpoint: str
    bucket: str

    def path(self, service_name: str, container_path: str) -> str:
        service = services()[service_name]
        mount = mount_of(service, container_path)
        assert mount is not None, f"{service_name}: {container_path} is on no volume"
        if mount.bind:
            assert (ROOT / str(mount.source)).resolve() == CONFIG_FILE
            return str(self.config)
        volume = mount.source or f"{service_name}-anonymous{mount.target.replace('/', '-')}"
        rest = PurePosixPath(container_path).relative_to(mount.target)
        host = self.root / "volumes" / volume / rest
        host.parent.mkdir(parents=True, exist_ok=True)
        return str(host)

    def environment(self, service_name: str) -> dict[str, str]:
        inside = container_environment(services()[service_name])
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("HANDOVER_", "AWS_"))
        }
        environment.update(inside)
        for name in PATH_SETTINGS:
            if name in inside:
                environment[name] = self.path(service_name, inside[name])
        addresses = {
            "HANDOVER_REDIS_URL": self.redis_url,
            "HANDOVER_S3_ENDPOINT_URL": self.s3_endpoint,
            "HANDOVER_S3_PUBLIC_ENDPOINT_URL": self.s3_endpoint,
            "HANDOVER_S3_BUCKET": self.bucket,
        }
        environment.update({k: v for k, v in addresses.items() if k in inside})
        unmapped = [
            k
            for k, v in inside.items()
            if k not in addresses and urlsplit(v).hostname in services()
        ]
        assert not unmapped, f"{service_name}: no address outside the stack for {unmapped}"
        return environment


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.popen = subprocess.Popen(args, env=env, stdout=self.handle, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
        code = self.popen.wait(timeout=30)
        self.handle.close()
        return code


@pytest.fixture
async def started() -> AsyncIterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in processes:
        await asyncio.to_thread(process.stop)


def handover(arguments: list[str]) -> list[str]:
    """The image's ENTRYPOINT (`handover`, i.e. service.cli.main:main) with ``arguments``."""
    return [sys.executable, "-m", "service.cli", *arguments]


def outside_command(command: list[str], port: int) -> list[str]:
    """A compose command line, listening on this machine's loopback and a free port."""
    replaced = list(command)
    if "--host" in replaced:
        replaced[replaced.index("--host") + 1] = "127.0.0.1"
    if "--port" in replaced:
        replaced[replaced.index("--port") + 1] = str(port)
    return replaced


async def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, args, env=env, capture_output=True, text=True, timeout=60
    )


async def demo_export(tmp_path: Path, subject: str) -> dict[str, list[Any]]:
    """What `handover serve`'s demo connectors (SQLite) export on ``subject``, by file."""
    database = tmp_path / "demo.sqlite3"
    seed_demo_database(database)
    built = build_connectors(list(demo_connector_configs(database)))
    found: dict[str, list[Any]] = {}
    for connector in built.values():
        await connector.open()
    try:
        # The demo's profile connector is the identity source of the subject's email.
        email = (await built["profile"].resolve(Subject(subject))).get("email")
        for connector in built.values():
            async for item in connector.export(Subject(subject, email=email)):
                assert isinstance(item, Record)
                found.setdefault(f"{connector.name}/{item.dataset}.json", []).append(item.data)
    finally:
        for connector in built.values():
            await connector.close()
    return orjson.loads(orjson.dumps(found))  # type: ignore[no-any-return]


async def wait_for_job(
    session: ClientSession, base: str, job_id: str, headers: dict[str, str]
) -> dict[str, Any]:

    async def current() -> dict[str, Any]:
        async with session.get(f"{base}/v1/jobs/{job_id}", headers=headers) as response:
            job: dict[str, Any] = await response.json()
            return job

    return await eventually(
        current,
        until=lambda job: job["status"] in {"succeeded", "failed", "canceled"},
        timeout=60,
        what=f"job {job_id} to end",
    )


async def test_the_stack_serves_alices_export_from_the_platform_database(
    tmp_path: Path,
    platform_database: str,
    redis: ArqRedis,
    s3_endpoint: str,
    bucket: str,
    started: list[Process],
) -> None:
    (platform_url,) = platform_urls()
    config = tmp_path / "handover.toml"
    config.write_text(CONFIG_FILE.read_text().replace(platform_url, platform_database))
    outside = Outside(tmp_path, config, REDIS_URL, s3_endpoint, bucket)
    every = services()

    # signing-key: makes the key once; a second run (a restart) keeps it.
    maker = every["signing-key"]
    key_file = outside.path("signing-key", maker["command"][0])
    made = [
        await run(
            [sys.executable, *maker["entrypoint"][1:], key_file], outside.environment("signing-key")
        )
        for _ in range(2)
    ]
    assert [m.returncode for m in made] == [0, 0], made[0].stderr
    assert made[0].stdout == made[1].stdout
    key_id = made[0].stdout.split()[2]

    port = free_port()
    api_env = outside.environment("api")
    assert api_env["HANDOVER_SIGNING_KEY_FILE"] == key_file
    for name in ("api", "worker"):
        command = outside_command(every[name]["command"], port)
        started.append(
            Process(handover(command), outside.environment(name), tmp_path / f"{name}.log")
        )
    await asyncio.to_thread(wait_for_port, port, 30)
    base = f"http://127.0.0.1:{port}"

    # The image's health check, against this API.
    check = healthcheck_command()
    code = check[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    assert (await run([sys.executable, "-c", code], api_env)).returncode == 0
    closed = check[2].replace("127.0.0.1:8080", f"127.0.0.1:{free_port()}")
    assert (await run([sys.executable, "-c", closed], api_env)).returncode != 0

    # As the compose file's comment says: docker compose exec api handover token --sub alice
    minted = await run(handover(["token", "--sub", "alice"]), api_env)
    assert minted.returncode == 0, minted.stderr
    headers = {"Authorization": f"Bearer {minted.stdout.strip()}"}
    async with ClientSession() as session:
        async with session.post(
            f"{base}/v1/exports", json={"formats": ["json"]}, headers=headers
        ) as response:
            assert response.status == 202, await response.text()
            job = await response.json()
        done = await wait_for_job(session, base, job["id"], headers)
        assert done["status"] == "succeeded", (done, started[1].output()[-3000:])
        assert done["result"]["key_id"] == key_id
        async with session.get(
            f"{base}/v1/jobs/{job['id']}/download", headers=headers, allow_redirects=False
        ) as response:
            assert response.status == 303
            link = response.headers["Location"]
        assert link.startswith(s3_endpoint)  # HANDOVER_S3_PUBLIC_ENDPOINT_URL
        async with session.get(link) as response:
            assert response.status == 200
            archive = tmp_path / "export.zip"
            archive.write_bytes(await response.read())

        async with session.post(
            f"{base}/v1/erasures", json={"dry_run": True}, headers=headers
        ) as response:
            assert response.status == 202, await response.text()
            erasure = await response.json()
        erased = await wait_for_job(session, base, erasure["id"], headers)
        async with session.get(
            f"{base}/v1/jobs/{erasure['id']}/receipt", headers=headers
        ) as response:
            assert response.status == 200
            (tmp_path / "receipt.json").write_bytes(await response.read())

        async def readiness() -> tuple[int, dict[str, Any]]:
            async with session.get(f"{base}/readyz") as response:
                return response.status, await response.json()

        _, ready = await eventually(
            readiness,
            until=lambda answer: answer[0] == 200,
            timeout=20,
            what="/readyz to answer 200",
        )
        assert ready["status"] == "ready", ready

    for document in (archive, tmp_path / "receipt.json"):
        verified = await run(
            handover(["verify", str(document), "--keys-url", f"{base}/v1/keys"]), api_env
        )
        assert verified.returncode == 0, verified.stderr
        assert f"signed by key {key_id}" in verified.stdout

    files = zipfile.ZipFile(archive)
    expected = await demo_export(tmp_path, "alice")
    assert {name for name in files.namelist() if name.count("/") == 1} == set(expected)
    for name, records in expected.items():
        assert orjson.loads(files.read(name)) == records, name
    profile = orjson.loads(files.read("profile/profile.json"))
    assert profile[0]["email"] == "alice@example.com"

    assert erased["status"] == "succeeded", erased
    reports = {name: run["report"] for name, run in erased["connectors"].items()}
    invoices = {entry["dataset"]: entry for entry in reports["billing"]["datasets"]}["invoices"]
    assert invoices["retained"] == len(expected["billing/invoices.json"])
    assert invoices["deleted"] == 0 and invoices["legal_basis"].startswith("Tax law")
    accounts = {entry["dataset"]: entry for entry in reports["profile"]["datasets"]}["profile"]
    assert accounts["anonymised"] == 1

    for process in started:
        assert process.stop() == 0, process.output()[-3000:]


def test_make_demo_installs_the_runtime_only_and_serves_on_the_port_given() -> None:
    """``make demo PORT=…`` (dry run, every step shown): pip installs Handover without
    the dev extra, and ``handover serve`` listens on that port."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    shown = subprocess.run(
        ["make", "-n", "-B", "demo", "PORT=9123"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = [shlex.split(line) for line in shown.splitlines() if line.strip()]
    installs = [c for c in commands if Path(c[0]).name == "pip" and "install" in c]
    assert not any("dev" in word for c in installs for word in c), installs
    assert any("-e" in c and c[c.index("-e") + 1] == "." for c in installs), installs
    (serve,) = [c for c in commands if "serve" in c]
    assert Path(serve[serve.index("serve") - 1]).name == "handover"
    assert serve[serve.index("--port") + 1] == "9123", serve
