import io, zipfile
import orjson
from connectors.testing import MemoryConnector, SyntheticConnector
from jobs.export import ExportPipeline
from jobs.worker import create_worker
from jobs.model import JobStatus


async def test_smoke(resources_factory, redis):
    conns = {
        "crm": MemoryConnector(
            "crm",
            records={"alice": {"contacts": [{"a": 1}, {"a": 2}]}},
            files={"alice": {"pic.png": b"\x89PNG..."}},
        ),
        "tele": SyntheticConnector("tele", records=5000),
    }
    async with resources_factory(conns) as res:
        p = ExportPipeline(res)
        job, created = await p.create(
            subject="alice", requested_by="alice", formats=["json", "csv", "ndjson"]
        )
        w = create_worker(
            res.settings, redis=redis, resources=res, burst=True, poll_delay=0, handle_signals=False
        )
        await w.main()
        job = await res.store.get(job.id)
        print(job.status, job.error, {n: (r.status, r.error) for n, r in job.connectors.items()})
        assert job.status is JobStatus.SUCCEEDED
        data = await res.storage.get(job.result.key)
        z = zipfile.ZipFile(io.BytesIO(data))
        print(z.namelist(), z.testzip())
        print(z.read("manifest.json")[:600].decode())
        assert len(orjson.loads(z.read("tele/telemetry.json"))) == 5000
        print([e.type for e in await res.store.events(job.id)])
