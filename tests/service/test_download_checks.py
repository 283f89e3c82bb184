"""``handover export --download`` keeps an archive only if it is the one the job recorded:
its CRC-32 (S3's full-object checksum, for an archive S3 assembled) and, when the job has
one, its SHA-256. The download goes through the real API and the real presigned link.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from aiohttp import ClientSession

from connectors.testing import MemoryConnector
from jobs.settings import Secret
from service.cli.client import ApiClient, CliError, Connection
from tests.service.conftest import Api, ApiFactory


@pytest.fixture
async def api(api_factory: ApiFactory) -> Api:
    return await api_factory(
        {"crm": MemoryConnector("crm", records={"alice": {"contacts": [{"id": 1}]}})}
    )


async def finished_export(api: Api) -> dict[str, str]:
    job = await api.export()
    done = await api.wait(job["id"], "succeeded")
    result: dict[str, str] = done["result"]
    return {"id": job["id"], **result}


async def download(api: Api, job_id: str, target: Path, crc32: str | None) -> int:
    connection = Connection(url=api.base, token=Secret(api.token("alice")))
    async with ClientSession() as session:
        return await ApiClient(session, connection).download(job_id, target, None, crc32)


async def test_a_download_with_the_recorded_crc32_is_kept(api: Api, tmp_path: Path) -> None:
    job = await finished_export(api)
    target = tmp_path / "export.zip"

    size = await download(api, job["id"], target, job["crc32"])

    assert size == target.stat().st_size
    assert f"{zlib.crc32(target.read_bytes()):08x}" == job["crc32"]


async def test_a_download_whose_crc32_differs_is_not_kept(api: Api, tmp_path: Path) -> None:
    job = await finished_export(api)
    target = tmp_path / "export.zip"
    wrong = f"{int(job['crc32'], 16) ^ 1:08x}"

    with pytest.raises(CliError, match=f"CRC-32 {job['crc32']} is not the archive's {wrong}"):
        await download(api, job["id"], target, wrong)

    assert not target.exists()
    assert not (tmp_path / "export.zip.part").exists()
