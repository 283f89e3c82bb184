"""``handover verify``'s checks: duplicated members, unsafe names, repeated keys, key URLs;
what an intact archive's verdict says, its CRC-32 included."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobs.archive.receipt import FORMAT as RECEIPT_FORMAT
from jobs.archive.receipt import canonical
from jobs.archive.signing import SignatureError, Signer, public_jwk
from jobs.archive.verify import check_keys_url, fetch_keys, verify_archive, verify_receipt_file
from jobs.archive.writer import FORMAT, MANIFEST, SIGNATURE

CONTACTS = b'[{"id": 1, "email": "alice@example.com"}]\n'


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def manifest_for(files: dict[str, bytes]) -> bytes:
    entries = [
        {"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in files.items()
    ]
    return orjson.dumps({"format": FORMAT, "subject": {"id": "alice"}, "files": entries})


def write_archive(
    path: Path, signer: Signer, manifest: bytes, members: list[tuple[str, bytes]]
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate it is told to write
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(MANIFEST, manifest)
            archive.writestr(SIGNATURE, signer.sign(manifest))
            for name, data in members:
                archive.writestr(name, data)
    return path


def test_a_signed_archive_verifies(tmp_path: Path, signer: Signer) -> None:
    members = {"crm/contacts.json": CONTACTS}
    path = write_archive(tmp_path / "a.zip", signer, manifest_for(members), [*members.items()])

    result = verify_archive(path, [signer.public_key])

    assert result.problems == []
    assert (result.files, result.key_id) == (1, signer.key_id)


@pytest.mark.parametrize("forged_first", [True, False])
def test_a_member_name_used_twice_fails_whichever_copy_comes_first(
    tmp_path: Path, signer: Signer, forged_first: bool
) -> None:
    genuine = ("crm/contacts.json", CONTACTS)
    forged = ("crm/contacts.json", b'[{"id": 1, "email": "mallory@example.com"}]\n')
    members = [forged, genuine] if forged_first else [genuine, forged]
    manifest = manifest_for(dict([genuine]))
    path = write_archive(tmp_path / "a.zip", signer, manifest, members)

    result = verify_archive(path, [signer.public_key])

    assert not result.ok
    assert (
        "crm/contacts.json: the archive holds 2 members of this name; "
        "a forged copy could be the one an unzip tool keeps"
    ) in result.problems


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../../../x.json", "it has a .. segment"),
        ("/etc/cron.d/x", "it is an absolute path"),
        ("crm\\..\\..\\x.json", "it holds a backslash"),
        ("C:/Users/x.json", "it starts with a drive letter"),
    ],
)
def test_an_unsafe_member_name_fails_even_when_the_manifest_signs_it(
    tmp_path: Path, signer: Signer, name: str, problem: str
) -> None:
    members = {name: CONTACTS}
    path = write_archive(tmp_path / "a.zip", signer, manifest_for(members), [*members.items()])

    result = verify_archive(path, [signer.public_key])

    assert result.key_id == signer.key_id  # the signature holds; the name does not
    assert [p for p in result.problems if "unsafe member name" in p] == [
        f"{name}: unsafe member name ({problem}): it could be written "
        "outside the folder the archive is extracted to"
    ]


def test_a_manifest_that_repeats_a_key_fails_even_when_signed(
    tmp_path: Path, signer: Signer
) -> None:
    members = {"crm/contacts.json": CONTACTS}
    manifest = manifest_for(members).replace(b"{", b'{"subject":{"id":"mallory"},', 1)
    path = write_archive(tmp_path / "a.zip", signer, manifest, [*members.items()])

    result = verify_archive(path, [signer.public_key])

    assert result.problems == [
        "manifest.json repeats the key(s) 'subject' within one object: "
        "readers disagree on which copy counts, so it is refused"
    ]


def signed_receipt(signer: Signer, **job: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": RECEIPT_FORMAT,
        "kind": "erasure",
        "job": {"id": "01J0000000000000000000000", "dry_run": False, **job},
        "subject": {"id": "alice"},
        "connectors": [{"connector": "crm", "datasets": [{"dataset": "contacts", "deleted": 1}]}],
    }
    document["signature"] = orjson.loads(signer.sign(canonical(document)))
    return document


def test_a_receipt_verifies(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "receipt.json"
    path.write_bytes(orjson.dumps(signed_receipt(signer)))

    result = verify_receipt_file(path, [signer.public_key])

    assert result.problems == []
    assert result.receipt is not None and result.receipt["job"]["dry_run"] is False


@pytest.mark.parametrize("repeated", ['"deleted":1', '"kind":"erasure"', '"dataset":"contacts"'])
def test_a_receipt_that_repeats_a_key_fails(tmp_path: Path, signer: Signer, repeated: str) -> None:
    data = orjson.dumps(signed_receipt(signer))
    assert data.count(repeated.encode()) == 1
    key = repeated.split(":")[0]
    forged = data.replace(repeated.encode(), f"{key}:0,{repeated}".encode())
    path = tmp_path / "receipt.json"
    path.write_bytes(forged)

    result = verify_receipt_file(path, [signer.public_key])

    assert result.problems == [
        f"the receipt repeats the key(s) {key.replace(chr(34), chr(39))} within one object: "
        "readers disagree on which copy counts, so it is refused"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "https://handover.example.com/v1/keys",
        "HTTPS://handover.example.com:8443/v1/keys",
        "http://127.0.0.1:8080/v1/keys",
        "http://127.8.9.10/v1/keys",
        "http://[::1]:8080/v1/keys",
        "http://localhost:8080/v1/keys",
        "http://LOCALHOST/v1/keys",
    ],
)
def test_keys_urls_over_https_or_to_this_machine_are_accepted(url: str) -> None:
    check_keys_url(url)


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("http://handover.example.com/v1/keys", "plain http is accepted only to this machine"),
        ("http://10.0.0.7:8080/v1/keys", "plain http is accepted only to this machine"),
        ("http://[::ffff:7f00:1]/v1/keys", "plain http is accepted only to this machine"),
        ("http://localhost.example.com/v1/keys", "plain http is accepted only to this machine"),
        ("http://127.0.0.1.nip.io/v1/keys", "plain http is accepted only to this machine"),
        ("https:///v1/keys", "'https' is not accepted"),
        ("file:///etc/handover/keys.json", "'file' is not accepted"),
        ("ftp://keys.example.com/keys.json", "'ftp' is not accepted"),
        ("data:application/json,{}", "'data' is not accepted"),
        ("handover.example.com/v1/keys", "a URL with no scheme is not accepted"),
        ("http://[::1/v1/keys", "is malformed"),
    ],
)
def test_keys_urls_anyone_between_could_answer_are_refused(url: str, refusal: str) -> None:
    with pytest.raises(SignatureError) as caught:
        check_keys_url(url)
    assert str(caught.value).startswith(f"keys URL {url!r}")
    assert refusal in str(caught.value)


@pytest.fixture
async def keys_server(signer: Signer) -> AsyncIterator[str]:
    """Serves the signer's keys on loopback, and redirects that lead elsewhere."""

    async def keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [public_jwk(signer.public_key)]})

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/v1/keys", keys)
    app.router.add_get("/moved", moved)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def fetch(url: str) -> list[Any]:
    return await asyncio.to_thread(fetch_keys, url, 5.0)


async def test_a_redirect_on_this_machine_is_followed(keys_server: str, signer: Signer) -> None:
    [key] = await fetch(f"{keys_server}/moved?to={keys_server}/v1/keys")
    assert key.public_bytes_raw() == signer.public_key.public_bytes_raw()


@pytest.mark.parametrize(
    "target", ["http://192.0.2.1/v1/keys", "ftp://192.0.2.1/keys", "https:///v1/keys"]
)  # (urllib itself refuses to follow a redirect to file:)
async def test_a_redirect_off_the_rule_is_refused(keys_server: str, target: str) -> None:
    start = f"{keys_server}/moved?to={target}"
    with pytest.raises(SignatureError) as caught:
        await fetch(start)
    assert str(caught.value).startswith(f"{start} redirected elsewhere: keys URL {target!r}")


def test_handover_verify_says_what_vouches_for_the_archive_and_its_crc32(
    tmp_path: Path, signer: Signer
) -> None:
    members = {"crm/contacts.json": CONTACTS}
    path = write_archive(tmp_path / "a.zip", signer, manifest_for(members), [*members.items()])
    key = tmp_path / "keys.jwk"
    key.write_bytes(orjson.dumps({"keys": [public_jwk(signer.public_key)]}))
    crc32 = f"{zlib.crc32(path.read_bytes()):08x}"

    assert verify_archive(path, [signer.public_key]).crc32 == crc32
    verified = subprocess.run(
        [sys.executable, "-m", "service.cli", "verify", str(path), "--key", str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == (
        f"OK: {path}: 1 files match the manifest, signed by key {signer.key_id} (each "
        f"file's SHA-256); the archive's CRC-32 is {crc32}, as its job's result.crc32 "
        "should be\n"
    )
