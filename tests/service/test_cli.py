"""The ``handover`` command line, run as a real process, the way operators run it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import jwt
import pytest

from jobs.archive.signing import Signer, public_jwk
from tests.conftest import free_port
from tests.service.conftest import Api, ApiFactory
from tests.service.test_api import crm, download_archive

JWT = "cli-test-secret-" + "z" * 40


def handover(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
async def archive(api_factory: ApiFactory, tmp_path: Path) -> tuple[Path, Api]:
    api = await api_factory({"crm": crm()})
    job = await api.export(formats=["json", "csv"])
    await api.wait(job["id"], "succeeded")
    data, _ = await download_archive(api, job["id"])
    path = tmp_path / "export.zip"
    path.write_bytes(data)
    return path, api


def write_key(tmp_path: Path, signer: Signer) -> Path:
    import orjson

    key = tmp_path / "key.jwk"
    key.write_bytes(orjson.dumps({"keys": [public_jwk(signer.public_key)]}))
    return key


async def test_verify_accepts_an_intact_archive(archive: tuple[Path, Api], tmp_path: Path) -> None:
    path, api = archive
    result = handover("verify", str(path), "--key", str(write_key(tmp_path, api.resources.signer)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {path}: 6 files match the manifest")


async def test_verify_accepts_keys_from_the_service_url(archive: tuple[Path, Api]) -> None:
    path, api = archive
    # The API serves on this event loop: run the command from a thread so it can answer.
    result = await asyncio.to_thread(
        handover, "verify", str(path), "--keys-url", f"{api.base}/v1/keys"
    )
    assert result.returncode == 0, result.stderr


async def test_verify_detects_a_changed_byte(archive: tuple[Path, Api], tmp_path: Path) -> None:
    path, api = archive
    key = write_key(tmp_path, api.resources.signer)
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    contacts = bytearray(members["crm/contacts.json"])
    contacts[5] ^= 0x01
    members["crm/contacts.json"] = bytes(contacts)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    result = handover("verify", str(tampered), "--key", str(key))
    assert result.returncode == 1
    assert "crm/contacts.json: SHA-256 does not match the manifest" in result.stderr


async def test_verify_detects_a_changed_manifest_and_a_foreign_key(
    archive: tuple[Path, Api], tmp_path: Path
) -> None:
    path, api = archive
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    members["manifest.json"] = members["manifest.json"].replace(b'"alice"', b'"mallory"')
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    key = write_key(tmp_path, api.resources.signer)
    result = handover("verify", str(forged), "--key", str(key))
    assert result.returncode == 1
    assert "does not match the signed bytes" in result.stderr

    stranger = Signer.from_file(tmp_path / "other.pem", create=True)
    (tmp_path / "o").mkdir()
    result = handover("verify", str(path), "--key", str(write_key(tmp_path / "o", stranger)))
    assert result.returncode == 1
    assert "not among the trusted keys" in result.stderr


def test_verify_rejects_a_file_that_is_no_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    key = write_key(tmp_path, Signer.from_file(tmp_path / "k.pem", create=True))
    result = handover("verify", str(junk), "--key", str(key))
    assert result.returncode == 1
    assert "not a readable ZIP archive" in result.stderr


def test_verify_with_a_missing_key_file_is_one_line(tmp_path: Path) -> None:
    result = handover("verify", str(tmp_path / "a.zip"), "--key", str(tmp_path / "none.pem"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "cannot read key file" in result.stderr


def test_token_is_signed_with_the_configured_secret() -> None:
    result = handover(
        "token",
        "--sub",
        "alice",
        "--role",
        "support",
        "--ttl",
        "15m",
        env={"HANDOVER_JWT_SECRET": JWT},
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), JWT, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["roles"] == ["support"]
    assert claims["exp"] - claims["iat"] == 900


def test_token_with_an_email_vouches_for_it() -> None:
    result = handover(
        "token", "--sub", "alice", "--email", "alice@example.com", env={"HANDOVER_JWT_SECRET": JWT}
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), JWT, algorithms=["HS256"])
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    plain = handover("token", "--sub", "alice", env={"HANDOVER_JWT_SECRET": JWT})
    assert "email" not in jwt.decode(plain.stdout.strip(), JWT, algorithms=["HS256"])


def test_embedded_token_secret_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    env = {"HANDOVER_DATA_DIR": str(tmp_path)}
    first = handover("token", "--sub", "alice", env=env)
    second = handover("token", "--sub", "alice", env=env)
    secret = (tmp_path / "jwt-secret").read_text()
    for result in (first, second):
        assert jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "alice"


LOYALTY_CONNECTOR = """
[connectors.loyalty]
type = "http"
base_url = "http://127.0.0.1:9"
erase = { method = "DELETE", path = "/members/{identities.loyalty_number}" }

[[connectors.loyalty.datasets]]
name = "points"
category = "economic"
path = "/members/{identities.loyalty_number}"
"""


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            LOYALTY_CONNECTOR,
            "connectors: connector 'loyalty' needs loyalty_number, "
            "which no token claim and no identity source provides",
        ),
        (
            '[connectors.x]\ntype = "nope"\n',
            "HANDOVER_CONFIG: [connectors.x]: unknown connector type 'nope'",
        ),
    ],
)
def test_connectors_that_cannot_work_stop_the_service_with_one_line(
    tmp_path: Path, config: str, message: str
) -> None:
    path = tmp_path / "handover.toml"
    path.write_text(config)
    result = handover(
        "serve",
        "--port",
        "0",
        env={"HANDOVER_CONFIG": str(path), "HANDOVER_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"handover: {message}")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"HANDOVER_ARCHIVE_TTL": "soon"}, ["token", "--sub", "a"], "HANDOVER_ARCHIVE_TTL:"),
        ({"HANDOVER_JWT_SECRET": "short"}, ["token", "--sub", "a"], "HANDOVER_JWT_SECRET:"),
        ({"HANDOVER_REDIS_URL": "http://x"}, ["worker"], "HANDOVER_REDIS_URL:"),
        ({}, ["worker"], "HANDOVER_REDIS_URL: a worker needs"),
        ({}, ["api"], "HANDOVER_REDIS_URL: `handover api` needs"),
        ({"HANDOVER_JWT_SECRET": JWT}, ["token", "--sub", "a", "--ttl", "x"], "--ttl:"),
        ({"HANDOVER_CONFIG": "/nonexistent.toml"}, ["token", "--sub", "a"], "HANDOVER_CONFIG:"),
        ({"HANDOVER_JWT_SECRET": JWT}, ["token", "--sub", "a", "--email", "x"], "--email:"),
        (
            {"HANDOVER_IDENTITY_CLAIMS": "crm_id"},
            ["token", "--sub", "a"],
            "HANDOVER_IDENTITY_CLAIMS: expected claim:identifier",
        ),
        (
            {"HANDOVER_IDENTITY_CLAIMS": "email:crm_id"},
            ["token", "--sub", "a"],
            "HANDOVER_IDENTITY_CLAIMS: email:crm_id: sub, email and phone_number are built in",
        ),
    ],
)
def test_bad_settings_stop_with_one_line(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    result = handover(*args, env={"HANDOVER_DATA_DIR": str(tmp_path), **env})
    assert result.returncode == 2
    assert result.stderr.startswith(f"handover: {message}")
    assert result.stderr.count("\n") == 1


def members_of(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as source:
        return [(info.filename, source.read(info)) for info in source.infolist()]


def write_members(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate it is told to write
        with zipfile.ZipFile(path, "w") as target:
            for name, data in members:
                target.writestr(name, data)
    return path


async def test_verify_refuses_a_forged_copy_of_a_member_placed_first(
    archive: tuple[Path, Api], tmp_path: Path
) -> None:
    path, api = archive
    members = members_of(path)
    forged = tmp_path / "forged.zip"
    write_members(forged, [("crm/contacts.json", b'[{"id": 1, "forged": true}]\n'), *members])
    key = str(write_key(tmp_path, api.resources.signer))

    result = handover("verify", str(forged), "--key", key)

    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert (
        f"FAIL: {forged}: crm/contacts.json: the archive holds 2 members of this name; "
        "a forged copy could be the one an unzip tool keeps\n"
    ) in result.stderr


async def receipt_bytes(api: Api, job_id: str) -> bytes:
    headers = api.auth("alice")
    async with api.session.get(f"{api.base}/v1/jobs/{job_id}/receipt", headers=headers) as answer:
        assert answer.status == 200
        return await answer.read()


@pytest.fixture
async def dry_run_receipt(api_factory: ApiFactory, tmp_path: Path) -> tuple[Path, Path, str]:
    """A dry-run erasure's receipt from the API, the key that signed it, and the job id."""
    api = await api_factory({"crm": crm()})
    status, _, job = await api.request("POST", "/v1/erasures", json={"dry_run": True})
    assert status == 202, job
    await api.wait(job["id"], "succeeded")
    path = tmp_path / "receipt.json"
    path.write_bytes(await receipt_bytes(api, job["id"]))
    return path, write_key(tmp_path, api.resources.signer), job["id"]


def test_verify_says_a_dry_run_receipt_erased_nothing(
    dry_run_receipt: tuple[Path, Path, str],
) -> None:
    path, key, job_id = dry_run_receipt

    result = handover("verify", str(path), "--key", str(key))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {path}: dry-run erasure receipt of job {job_id}, ")
    assert result.stdout.endswith(": nothing was erased\n")


def test_verify_refuses_a_receipt_that_repeats_a_key(
    dry_run_receipt: tuple[Path, Path, str],
) -> None:
    path, key, _ = dry_run_receipt
    data = path.read_bytes()
    assert data.count(b'"dry_run":true') == 1, data
    # A reader keeping the first copy sees a real erasure; the signature covers the last.
    path.write_bytes(data.replace(b'"dry_run":true', b'"dry_run":false,"dry_run":true'))

    result = handover("verify", str(path), "--key", str(key))

    assert result.returncode == 1, result.stdout
    assert result.stderr == (
        f"FAIL: {path}: the receipt repeats the key(s) 'dry_run' within one object: "
        "readers disagree on which copy counts, so it is refused\n"
    )


def test_verify_refuses_keys_over_http_to_another_machine(tmp_path: Path) -> None:
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(b"{}")
    url = "http://keys.example.com/v1/keys"

    result = handover("verify", str(receipt), "--keys-url", url)

    assert result.returncode == 2
    assert result.stderr == (
        f"handover: keys URL {url!r}: plain http is accepted only to this machine "
        "(127.0.0.0/8, ::1, localhost); use https, or pin the key with --key FILE\n"
    )


def test_verify_fetches_keys_over_https(tmp_path: Path) -> None:
    # Nothing listens there: the URL passed the rule when the fetch itself is what fails.
    url = f"https://127.0.0.1:{free_port()}/v1/keys"
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(b"{}")

    result = handover("verify", str(receipt), "--keys-url", url)

    assert result.returncode == 2
    assert result.stderr.startswith(f"handover: cannot fetch keys from {url}: "), result.stderr
    assert result.stderr.count("\n") == 1


FREEZE_PROBE = """
import gc, json
from service.cli.main import freeze_startup_objects
from service.app import create_app  # what `handover api` holds once started, in part

started = len(gc.get_objects())
freeze_startup_objects()
print(json.dumps({
    "started": started,
    "frozen": gc.get_freeze_count(),
    "walked": sum(len(gc.get_objects(generation)) for generation in range(3)),
}))
"""


def test_a_started_process_keeps_its_objects_out_of_full_collections() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FREEZE_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(done.stdout)

    assert found["started"] > 10_000
    assert found["frozen"] >= found["started"] * 0.9
    assert found["walked"] < 100, "a full collection still walks what starting made"
