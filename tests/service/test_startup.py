"""Start-up as an operator meets it: the ``handover`` processes, run for real.

- Every start-up problem of ``serve``, ``api`` and ``worker`` (Redis unreachable or its
  URL malformed, S3 unreachable or its bucket missing, an unknown connector type, a
  connector's database unusable, the port taken) ends the process within seconds
  with a non-zero exit and exactly one line on stderr naming the setting; nothing on
  stdout, so no banner and no token.
- The banner is printed once the port accepts connections, and names where jobs and
  archives are really kept.
- One data dir, one ``handover serve``; ``handover demo reset`` brings the demo back
  as new, and is refused while a ``serve`` runs or when the demo is not in use.
- ``handover token`` finds the data dir whatever its current directory.
- Which setting a failure names comes from what the failure was: S3 that answered
  (the bucket) or could not be reached (the endpoint), a connector's check that did
  not answer in time or timed out on its own.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from aiohttp import ClientSession

from connectors.testing import MemoryConnector
from jobs import resources
from jobs.resources import DEMO_DATABASE
from jobs.settings import Settings, default_data_dir
from jobs.storage.base import StorageError
from jobs.storage.s3 import S3Store
from tests.conftest import REDIS_URL, free_port, wait_for_port
from tests.polling import eventually
from tests.service.test_processes import Process, clean_env

JWT = "startup-test-secret-" + "s" * 40
#: A start-up failure is reported within this many seconds (Python's own start included).
PROMPTLY = 10.0

Environ = dict[str, str]


def handover(
    *args: str, env: Environ, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``handover ARGS`` to its end; its result and how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield taken.getsockname()[1]


def sql_connector_config(tmp_path: Path) -> Path:
    """A ``sql`` connector whose PostgreSQL does not answer (nothing listens on its port)."""
    path = tmp_path / "handover.toml"
    path.write_text(
        "[connectors.billing]\n"
        'type = "sql"\n'
        f'url = "postgresql://postgres@127.0.0.1:{free_port()}/test"\n'
        "connect_timeout = 3\n"
        "[[connectors.billing.tables]]\n"
        'table = "invoices"\n'
        'category = "economic"\n'
        'subject_column = "user_id"\n'
        'erase = "delete"\n'
    )
    return path


def unknown_type_config(tmp_path: Path) -> Path:
    path = tmp_path / "handover.toml"
    path.write_text('[connectors.billing]\ntype = "nosuchtype"\n')
    return path


EnvFactory = Callable[[pytest.FixtureRequest, Path], Environ]


def redis_down(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
    return {"HANDOVER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "HANDOVER_JWT_SECRET": JWT}


def sentinels_down(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
    # Ports 1 and 2: privileged, nothing listens there.
    url = "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/0"
    return {"HANDOVER_REDIS_URL": url, "HANDOVER_JWT_SECRET": JWT}


def redis_malformed(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
    return {"HANDOVER_REDIS_URL": "redis://host:notaport", "HANDOVER_JWT_SECRET": JWT}


def s3_down(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
    return {
        "HANDOVER_S3_BUCKET": "handover",
        "HANDOVER_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
    }


def bucket_missing(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
    return {
        "HANDOVER_S3_BUCKET": "no-such-bucket-for-handover",
        "HANDOVER_S3_ENDPOINT_URL": request.getfixturevalue("s3_endpoint"),
    }


def unusable_database(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
    return {"HANDOVER_CONFIG": str(sql_connector_config(tmp_path))}


def unknown_type(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
    return {"HANDOVER_CONFIG": str(unknown_type_config(tmp_path))}


def on_redis(env: EnvFactory) -> EnvFactory:
    """``env`` for a process on the test Redis (``api`` and ``worker`` need one)."""

    def with_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Environ:
        shared = {"HANDOVER_REDIS_URL": REDIS_URL, "HANDOVER_JWT_SECRET": JWT}
        return {**shared, **env(request, tmp_path)}

    return with_redis


SERVE = ["serve", "--port", "0"]
API = ["api", "--port", "0"]
WORKER = ["worker"]

REDIS_DOWN = "HANDOVER_REDIS_URL: Redis at 127.0.0.1:"
MALFORMED = "HANDOVER_REDIS_URL: "
SENTINELS_DOWN = (
    "HANDOVER_REDIS_URL: Redis at master 'mymaster' of Sentinels 127.0.0.1:1,127.0.0.1:2 "
    "cannot be used: no Sentinel named its primary (127.0.0.1:1 refused the connection; "
    "127.0.0.1:2 refused the connection)\n"
)
CASES: dict[str, tuple[list[str], EnvFactory, str]] = {
    "redis unreachable, serve": (SERVE, redis_down, REDIS_DOWN),
    "redis unreachable, worker": (WORKER, redis_down, REDIS_DOWN),
    "sentinels unreachable, worker": (WORKER, sentinels_down, SENTINELS_DOWN),
    "sentinels unreachable, serve": (SERVE, sentinels_down, SENTINELS_DOWN),
    "redis url malformed, serve": (SERVE, redis_malformed, MALFORMED),
    "redis url malformed, worker": (WORKER, redis_malformed, MALFORMED),
    "s3 unreachable, serve": (SERVE, s3_down, "HANDOVER_S3_ENDPOINT_URL: http://127.0.0.1:"),
    "s3 unreachable, worker": (
        WORKER,
        on_redis(s3_down),
        "HANDOVER_S3_ENDPOINT_URL: http://127.0.0.1:",
    ),
    "bucket missing, api": (
        API,
        on_redis(bucket_missing),
        "HANDOVER_S3_BUCKET: bucket 'no-such-bucket-for-handover' at http://127.0.0.1:",
    ),
    "unknown connector type, worker": (
        WORKER,
        on_redis(unknown_type),
        "HANDOVER_CONFIG: [connectors.billing]: unknown connector type 'nosuchtype'",
    ),
    "connector database unusable, serve": (
        SERVE,
        unusable_database,
        "HANDOVER_CONFIG: [connectors.billing] cannot be used: ",
    ),
    "connector database unusable, worker": (
        WORKER,
        on_redis(unusable_database),
        "HANDOVER_CONFIG: [connectors.billing] cannot be used: ",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_start_up_problem_stops_the_process_with_one_line(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    args, env, message = CASES[case]
    environ = clean_env(HANDOVER_DATA_DIR=str(tmp_path / "data"), **env(request, tmp_path))
    result, seconds = handover(*args, env=environ)
    assert result.returncode != 0, result
    assert result.stderr.startswith(f"handover: {message}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert len(result.stderr) < 240, f"a line to read, not a dump: {result.stderr}"
    assert result.stdout == "", "nothing printed, no banner, no token"
    assert seconds < PROMPTLY, f"took {seconds:.1f} s"


@pytest.mark.parametrize("command", ["serve", "api"])
def test_a_taken_port_stops_the_process_with_one_line_and_no_token(
    command: str, busy_port: int, tmp_path: Path
) -> None:
    environ = clean_env(HANDOVER_DATA_DIR=str(tmp_path / "data"))
    if command == "api":
        environ.update(HANDOVER_REDIS_URL=REDIS_URL, HANDOVER_JWT_SECRET=JWT)
    result, seconds = handover(command, "--port", str(busy_port), env=environ)
    assert result.returncode != 0
    assert result.stderr == (
        f"handover: --port {busy_port}: cannot listen on 127.0.0.1:{busy_port}: "
        "Address already in use\n"
    )
    assert result.stdout == ""
    assert seconds < PROMPTLY, f"took {seconds:.1f} s"


async def test_the_banner_follows_the_bound_port_and_names_the_storage_in_use(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    serve = Process(
        ["serve", "--port", str(port)],
        clean_env(HANDOVER_DATA_DIR=str(data_dir)),
        tmp_path / "serve.log",
    )
    try:
        banner = await eventually(
            serve.output,
            until=lambda output: "Support token" in output,
            timeout=30,
            what="the serve banner",
        )
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # no waiting
        assert (
            f"Keeping jobs in the embedded store at {data_dir / 'store'}; "
            f"archives on local disk at {data_dir / 'objects'}\n"
        ) in banner
    finally:
        assert serve.stop() == 0

    port = free_port()
    env = clean_env(
        HANDOVER_DATA_DIR=str(data_dir),
        HANDOVER_REDIS_URL=REDIS_URL,
        HANDOVER_JWT_SECRET=JWT,
        HANDOVER_S3_BUCKET=bucket,
        HANDOVER_S3_ENDPOINT_URL=s3_endpoint,
    )
    api = Process(["api", "--port", str(port)], env, tmp_path / "api.log")
    try:
        banner = await eventually(
            api.output,
            until=lambda output: "Keeping" in output,
            timeout=30,
            what="the api banner",
        )
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        redis = REDIS_URL.removeprefix("redis://")
        assert f"Keeping jobs in Redis at redis://{redis}; " in banner
        assert f"archives in S3 bucket {bucket} at {s3_endpoint}\n" in banner
        assert "token" not in banner.lower(), "the API alone prints no token"
    finally:
        assert api.stop() == 0


def demo_rows(data_dir: Path) -> int:
    with closing(sqlite3.connect(data_dir / DEMO_DATABASE)) as database:
        count: int = database.execute("SELECT count(*) FROM users").fetchone()[0]
        return count


@pytest.mark.slow
async def test_demo_reset_brings_the_demo_back_as_new(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    env = clean_env(HANDOVER_DATA_DIR=str(data_dir))
    base = f"http://127.0.0.1:{port}"
    serve = Process(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        token, _ = await asyncio.to_thread(handover, "token", "--sub", "alice", env=env)
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        async with (
            ClientSession() as session,
            session.post(f"{base}/v1/exports", json={}, headers=headers) as response,
        ):
            assert response.status == 202
            job = await response.json()

        # One data dir, one serve: a second is refused, and so is a reset.
        second, _ = await asyncio.to_thread(handover, "serve", "--port", "0", env=env)
        assert second.returncode != 0 and second.stdout == ""
        assert second.stderr == (
            f"handover: HANDOVER_DATA_DIR: {data_dir} is in use by a running `handover serve` "
            f"(pid {serve.popen.pid})\n"
        )
        refused, _ = await asyncio.to_thread(handover, "demo", "reset", env=env)
        assert refused.returncode != 0
        assert refused.stderr == second.stderr
    finally:
        assert serve.stop() == 0

    seeded = demo_rows(data_dir)
    with closing(sqlite3.connect(data_dir / DEMO_DATABASE)) as database, database:
        database.execute("DELETE FROM users WHERE id = 'carol'")
    assert demo_rows(data_dir) == seeded - 1

    assert list((data_dir / "mail").rglob("*.*"))  # the acknowledgement notice sent
    reset, _ = await asyncio.to_thread(handover, "demo", "reset", env=env)
    assert reset.returncode == 0, reset.stderr
    assert f"The demo in {data_dir} is as new" in reset.stdout
    assert demo_rows(data_dir) == seeded
    assert not (data_dir / "mail").exists()

    serve = Process(["serve", "--port", str(port)], env, tmp_path / "serve-2.log")
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        async with (
            ClientSession() as session,
            session.get(f"{base}/v1/jobs/{job['id']}", headers=headers) as response,
        ):
            # The token still holds (the secret is kept); the job is gone with the rest.
            assert response.status == 404, await response.text()
    finally:
        assert serve.stop() == 0


def test_demo_reset_is_refused_when_the_demo_is_not_in_use(tmp_path: Path) -> None:
    config = tmp_path / "handover.toml"
    config.write_text('[connectors.crm]\ntype = "memory"\n')
    for env, message in (
        ({"HANDOVER_CONFIG": str(config)}, "HANDOVER_CONFIG: connectors are configured"),
        ({"HANDOVER_REDIS_URL": REDIS_URL}, "HANDOVER_REDIS_URL: set"),
    ):
        result, _ = handover(
            "demo", "reset", env=clean_env(HANDOVER_DATA_DIR=str(tmp_path / "data"), **env)
        )
        assert result.returncode == 2
        assert result.stderr.startswith(f"handover: {message}"), result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "data" / DEMO_DATABASE).exists()


def start_in(cwd: Path, env: Environ, *args: str) -> subprocess.Popen[bytes]:
    """``handover ARGS`` started in ``cwd``, its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_token_minted_in_another_directory_is_accepted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = clean_env(HOME=str(home))
    env.pop("XDG_DATA_HOME", None)
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    port = free_port()
    serve = start_in(tmp_path / "here", env, "serve", "--port", str(port))
    try:
        await asyncio.to_thread(wait_for_port, port, 30)
        minted, _ = await asyncio.to_thread(
            handover, "token", "--sub", "alice", env=env, cwd=tmp_path / "elsewhere"
        )
        assert minted.returncode == 0, minted.stderr
        headers = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        async with (
            ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/v1/jobs", headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
        assert (home / ".local" / "share" / "handover" / "jwt-secret").is_file()
    finally:
        serve.terminate()
        assert await asyncio.to_thread(serve.wait, 30) == 0


def test_the_default_data_dir_is_per_user_and_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert default_data_dir() == Path("/srv/data/handover")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", "/home/someone")
    assert default_data_dir() == Path("/home/someone/.local/share/handover")


def test_a_third_party_processor_down_at_start_is_a_warning_not_a_stop(tmp_path: Path) -> None:
    """HubSpot unreachable for a moment must not keep Handover down: its runs retry.
    (Its credentials refused would stop it: that is a misconfiguration.)"""
    config = tmp_path / "handover.toml"
    config.write_text(
        "[connectors.crm]\n"
        'type = "hubspot"\n'
        f'token = "pat-na1-{"x" * 32}"\n'
        f'base_url = "http://127.0.0.1:{free_port()}"\n'
    )
    environ = clean_env(
        HANDOVER_DATA_DIR=str(tmp_path / "data"),
        HANDOVER_CONFIG=str(config),
        HANDOVER_REDIS_URL=REDIS_URL,
        HANDOVER_JWT_SECRET=JWT,
    )
    result, _ = handover("worker", "--burst", env=environ)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "cannot be reached now" in line]
    assert len(warnings) == 1 and "connector crm" in warnings[0], result.stderr


async def test_s3_says_whether_it_answered_and_start_up_names_the_setting_by_it(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """Told at the storage boundary (``StorageError.answered``), not by botocore's types."""
    cases = {
        "missing bucket": ("no-such-bucket-for-handover", s3_endpoint, True, "HANDOVER_S3_BUCKET"),
        "no endpoint": (
            "handover",
            f"http://127.0.0.1:{free_port()}",
            False,
            "HANDOVER_S3_ENDPOINT_URL",
        ),
    }
    for case, (bucket, endpoint, answered, setting) in cases.items():
        store = S3Store(bucket, endpoint_url=endpoint)
        try:
            with pytest.raises(StorageError) as failed:
                await store.check()
            assert failed.value.answered is answered, case
            settings = Settings(data_dir=tmp_path, s3_bucket=bucket, s3_endpoint_url=endpoint)
            with pytest.raises(resources.StartupError) as stopped:
                await resources._check_storage(settings, store)
            assert str(stopped.value).startswith(f"{setting}: "), case
        finally:
            await store.close()


class TimingOut(MemoryConnector):
    """A connector whose check raises its own ``TimeoutError``, or never answers."""

    def __init__(self, name: str, *, hang: bool) -> None:
        super().__init__(name)
        self.hang = hang

    async def check(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        raise TimeoutError("the processor's login took over 5 s")


async def test_a_connectors_own_timeout_is_not_taken_for_a_check_that_did_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resources, "CONNECTOR_CHECK_TIMEOUT", 0.05)
    own = await resources._check_connector(TimingOut("crm", hang=False))
    assert own == ("its check timed out: the processor's login took over 5 s", False)
    silent = await resources._check_connector(TimingOut("crm", hang=True))
    assert silent == ("its check did not answer within 0.05 s", False)
