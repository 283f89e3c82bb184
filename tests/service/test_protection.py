"""Archives protected end to end: with a password (AES-256 ZIP) or to an age recipient.

Read back with independent readers — pyzipper for WinZip AES, pyrage for age —
and shown unreadable without the secret.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pyrage
import pytest
import pyzipper

from connectors.testing import MemoryConnector
from jobs.archive.signing import jwk_public_key
from jobs.archive.verify import verify_archive
from jobs.model import Protection
from tests.service.conftest import Api, ApiFactory
from tests.service.test_api import ALICE, crm, download_archive

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(
        {"crm": crm(), "ads": MemoryConnector("ads", records={"alice": {"clicks": [{"n": 1}]}})}
    )


async def test_a_password_protects_every_member(api: Api, tmp_path: Path) -> None:
    job = await api.export(password=PASSWORD, formats=["json", "csv"])
    assert job["options"]["protection"] == {"kind": "password", "recipient": None}  # never shown
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    stored = await api.resources.store.get(job["id"])
    assert stored.export_options.protection == Protection(kind="password")
    assert stored.archive_password is None  # forgotten once written
    data, _ = await download_archive(api, job["id"])
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        archive.setpassword(PASSWORD.encode())
        assert orjson.loads(archive.read("crm/contacts.json")) == ALICE["contacts"]
        assert archive.testzip() is None
        plain = tmp_path / "plain.zip"
        with zipfile.ZipFile(plain, "w") as copy:
            for name in archive.namelist():
                copy.writestr(name, archive.read(name))
    _, _, keyset = await api.request("GET", "/v1/keys", sub=None)
    assert verify_archive(plain, [jwk_public_key(k) for k in keyset["keys"]]).ok
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        archive.setpassword(b"not the password")
        with pytest.raises(RuntimeError):
            archive.read("crm/contacts.json")
    assert b"alice@example.com" not in data
    unprotected = zipfile.ZipFile(io.BytesIO(data))
    with pytest.raises(RuntimeError, match="password"):
        unprotected.read("manifest.json")


async def test_an_age_recipient_protects_the_whole_archive(api: Api) -> None:
    identity = pyrage.x25519.Identity.generate()
    job = await api.export(age_recipient=str(identity.to_public()))
    done = await api.wait(job["id"])
    assert done["status"] == "succeeded", done
    data, _ = await download_archive(api, job["id"], filename_suffix=".zip.age")
    assert data.startswith(b"age-encryption.org/v1\n")
    assert b"alice@example.com" not in data
    archive = zipfile.ZipFile(io.BytesIO(pyrage.decrypt(data, [identity])))
    assert orjson.loads(archive.read("crm/contacts.json")) == ALICE["contacts"]
    stranger = pyrage.x25519.Identity.generate()
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(data, [stranger])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"password": "short"}, "password"),
        ({"age_recipient": "age1notakey"}, "age_recipient"),
        (
            {
                "password": PASSWORD,
                "age_recipient": str(pyrage.x25519.Identity.generate().to_public()),
            },
            "not both",
        ),
    ],
)
async def test_bad_protection_is_422(api: Api, body: dict[str, str], needle: str) -> None:
    status, _, problem = await api.request("POST", "/v1/exports", json=body)
    assert status == 422
    assert needle in problem["detail"]


async def test_a_password_is_forgotten_when_an_export_ends_without_an_archive(
    api_factory: ApiFactory,
) -> None:
    api = await api_factory({"crm": crm()}, worker=False)  # nothing runs: the job stays queued
    job = await api.export(password=PASSWORD)
    assert (await api.resources.store.get(job["id"])).archive_password == PASSWORD
    status, _, canceled = await api.request("POST", f"/v1/jobs/{job['id']}/cancel")
    assert status == 200 and canceled["status"] == "canceled"
    assert (await api.resources.store.get(job["id"])).archive_password is None
    redis: Any = api.resources.redis  # redis-py types its results for sync and async at once
    raw = await redis.hgetall(f"handover:job:{job['id']}")
    assert not any(PASSWORD.encode() in value for value in raw.values())
