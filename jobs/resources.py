"""What a Handover process shares between requests and jobs, opened and closed in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from arq.connections import ArqRedis

from connectors import demo
from connectors.base import Connector
from connectors.demo import seed_demo_database
from connectors.registry import ConnectorConfig, build_connectors
from jobs.archive.signing import Signer
from jobs.audit import AuditLog
from jobs.idempotency import IdempotencyStore
from jobs.identity import IdentityConfigError, plan_sources
from jobs.keyring import KeyRing
from jobs.leases import Leases
from jobs.metrics import Metrics
from jobs.queue import API_RETRIES, Queue, connect, embedded_redis
from jobs.ratelimit import RateLimiter
from jobs.settings import Settings, SettingsError
from jobs.storage.base import ObjectStore
from jobs.storage.local import LocalStore, load_link_secret
from jobs.storage.s3 import S3Store
from jobs.store import JobStore

DEMO_DATABASE = "demo-platform.sqlite3"
NAMESPACE = "handover:"


def demo_connector_configs(settings: Settings) -> tuple[ConnectorConfig, ...]:
    """The demo connectors over the sample platform database in the data dir."""
    return demo.demo_connector_configs(settings.data_dir / DEMO_DATABASE)


def connector_configs(settings: Settings) -> tuple[ConnectorConfig, ...]:
    """The configured connectors, or the demo set when none are configured."""
    if settings.connectors:
        return settings.connectors
    seed_demo_database(settings.data_dir / DEMO_DATABASE)
    return demo_connector_configs(settings)


def open_storage(settings: Settings) -> ObjectStore:
    """The object store the settings name."""
    if settings.s3_bucket is None:
        return LocalStore(
            settings.data_dir / "objects",
            link_secret=load_link_secret(settings.data_dir / "link-secret"),
            base_url=settings.public_url or "http://127.0.0.1:8080",
        )
    return S3Store(
        settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url,
        part_size=settings.s3_part_size,
        server_side_encryption=settings.s3_sse,
    )


@dataclass
class Resources:
    """Redis, the job store, object storage, connectors and the signing key of one process."""

    settings: Settings
    redis: ArqRedis
    store: JobStore
    queue: Queue
    storage: ObjectStore
    connectors: Mapping[str, Connector]
    signer: Signer
    keyring: KeyRing
    metrics: Metrics
    leases: Leases
    audit: AuditLog
    rate_limiter: RateLimiter
    idempotency: IdempotencyStore
    #: The connectors that look identifiers up, in the order they run (:mod:`jobs.identity`).
    identity_sources: tuple[Connector, ...] = ()

    @property
    def prefix(self) -> str:
        """Key prefix of every object Handover writes."""
        return self.settings.s3_prefix

    def staging_prefix(self, job_id: str) -> str:
        """Where a job's staged parts live."""
        return f"{self.prefix}staging/{job_id}/"

    def archive_key(self, job_id: str) -> str:
        """Where a job's archive lives."""
        return f"{self.prefix}archives/{job_id}/handover-export-{job_id}.zip"


@asynccontextmanager
async def open_resources(
    settings: Settings,
    *,
    redis: ArqRedis | None = None,
    storage: ObjectStore | None = None,
    connectors: Mapping[str, Connector] | None = None,
    namespace: str = NAMESPACE,
    redis_retries: int = API_RETRIES,
) -> AsyncIterator[Resources]:
    """Open everything from ``settings``; parts passed in are used as they are and not closed.

    Redis is opened for the API by default: a lost connection is retried briefly,
    then the request fails (503) instead of hanging. Workers pass their own, patient
    connection.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        if redis is None:
            if settings.redis_url is None:
                redis = embedded_redis()
            else:
                redis = await connect(settings.redis_url.reveal(), retries=redis_retries)
            stack.push_async_callback(redis.aclose)
        if storage is None:
            storage = open_storage(settings)
            stack.push_async_callback(storage.close)
        if connectors is None:
            connectors = build_connectors(list(connector_configs(settings)))
            for connector in connectors.values():
                await connector.open()
                stack.push_async_callback(connector.close)
        try:
            sources = plan_sources(connectors, (name for _, name in settings.identity_claims))
        except IdentityConfigError as exc:
            raise SettingsError(f"connectors: {exc}") from None
        key_file = settings.signing_key_file or settings.data_dir / "signing-key.pem"
        signer = Signer.from_file(key_file, create=settings.signing_key_file is None)
        keyring = KeyRing(redis, namespace, settings.archive_ttl)
        yield Resources(
            settings=settings,
            redis=redis,
            store=JobStore(redis, namespace),
            queue=Queue(redis),
            storage=storage,
            connectors=connectors,
            signer=signer,
            keyring=keyring,
            metrics=Metrics(redis, namespace),
            leases=Leases(redis, namespace),
            audit=AuditLog(redis, namespace),
            rate_limiter=RateLimiter(redis, namespace),
            idempotency=IdempotencyStore(redis, namespace),
            identity_sources=sources,
        )
