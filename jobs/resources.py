"""What a Handover process shares between requests and jobs, opened and closed in one place.

Opening checks what a process needs before it says it runs, and stops it with
:class:`StartupError`, one line naming the setting and the cause, when something is
missing: Redis that does not answer (``HANDOVER_REDIS_URL``), an embedded store that
cannot run (``HANDOVER_DATA_DIR``), object storage that cannot be used
(``HANDOVER_S3_ENDPOINT_URL``, ``HANDOVER_S3_BUCKET``) and a connector whose
``check()`` finds it misconfigured, or whose database (the platform's own) cannot be
used (its ``[connectors.NAME]`` table). A third-party processor that cannot be reached
at that moment only gets a warning: its runs retry.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from connectors import demo
from connectors.base import Connector
from connectors.demo import seed_demo_database
from connectors.errors import ConnectorError, ConnectorLoadError, TransientError
from connectors.registry import ConnectorConfig, build_connectors
from jobs.archive.signing import Signer
from jobs.audit import AuditLog
from jobs.embedded import EmbeddedStoreError, embedded_store, exclusive_store
from jobs.idempotency import IdempotencyStore
from jobs.identity import IdentityConfigError, plan_sources
from jobs.keyring import KeyRing
from jobs.leases import Leases
from jobs.metrics import Metrics
from jobs.queue import API_RETRIES, Queue, connect, describe, probe, redis_settings
from jobs.ratelimit import RateLimiter
from jobs.settings import Settings, SettingsError
from jobs.storage.base import ObjectStore, StorageError
from jobs.storage.local import LocalStore, load_link_secret
from jobs.store import JobStore

log = logging.getLogger("handover.resources")

DEMO_DATABASE = "demo-platform.sqlite3"
NAMESPACE = "handover:"
#: Longest a connector's start-up check may take before the process gives up on it.
CONNECTOR_CHECK_TIMEOUT = 20.0


class StartupError(Exception):
    """What a process needs at start cannot be had; the message is one line naming the setting."""


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
    # botocore is ~6 MB of a process's memory before any client: imported
    # only by a process whose archives go to S3.
    from jobs.storage.s3 import S3PlainStore, S3Store

    # Without server-side copy the store is no AssemblingStore: archives are written
    # byte by byte, and their SHA-256 and CRC-32 computed by the worker.
    store = S3Store if settings.s3_server_side_copy else S3PlainStore
    return store(
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
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.data_dir.chmod(0o700)  # one made by an older version, or by hand: private
    except OSError as exc:
        raise StartupError(f"HANDOVER_DATA_DIR: cannot use {settings.data_dir}: {exc}") from None
    async with AsyncExitStack() as stack:
        if redis is None:
            if settings.redis_url is None:
                try:
                    url = await stack.enter_async_context(embedded_store(settings.data_dir))
                except EmbeddedStoreError as exc:
                    raise StartupError(str(exc)) from None
            else:
                url = settings.redis_url.reveal()
                await probe_redis(url)
            redis = await connect(url, retries=redis_retries)
            stack.push_async_callback(redis.aclose)
        if storage is None:
            storage = open_storage(settings)
            stack.push_async_callback(storage.close)
            await _check_storage(settings, storage)
        if connectors is None:
            connectors = _build_connectors(settings)
            for connector in connectors.values():
                await connector.open()
                stack.push_async_callback(connector.close)
            await _check_connectors(connectors, configured=bool(settings.connectors))
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


def _build_connectors(settings: Settings) -> dict[str, Connector]:
    """The connectors the settings name; one that cannot be built stops us, naming its table."""
    if not settings.connectors:
        return build_connectors(list(connector_configs(settings)))
    built: dict[str, Connector] = {}
    for config in settings.connectors:
        try:
            built.update(build_connectors([config]))
        except ConnectorLoadError as exc:
            raise SettingsError(f"HANDOVER_CONFIG: [connectors.{config.name}]: {exc}") from None
    return built


@asynccontextmanager
async def shared_redis_and_storage(
    settings: Settings,
) -> AsyncIterator[tuple[ArqRedis, ObjectStore]]:
    """The shared Redis (reached once first: one line when it does not answer) and the
    object store ``settings`` name, for a command run beside the service; closed after.

    :class:`StartupError` when Redis is not set or cannot be used.
    """
    if settings.redis_url is None:
        raise StartupError("HANDOVER_REDIS_URL is not set: job records live in the shared Redis")
    url = settings.redis_url.reveal()
    try:
        await probe_redis(url)
        redis = await connect(url, retries=API_RETRIES)
    except (RedisError, OSError) as exc:
        raise StartupError(str(exc)) from None
    storage = open_storage(settings)
    try:
        yield redis, storage
    finally:
        await storage.close()
        await redis.aclose()


async def probe_redis(url: str) -> None:
    """Stop at once, in one line, when ``url`` is malformed or its Redis cannot be used.

    One attempt, no retries: a process that starts without its Redis says so instead
    of retrying in the background while it looks alive.
    """
    try:
        where = describe(redis_settings(url, retries=0))
    except (ValueError, RuntimeError) as exc:
        raise SettingsError(f"HANDOVER_REDIS_URL: {exc}") from None
    try:
        await probe(url)
    except (TimeoutError, RedisError, OSError) as exc:
        raise StartupError(f"HANDOVER_REDIS_URL: Redis at {where} cannot be used: {exc}") from None


async def _check_storage(settings: Settings, storage: ObjectStore) -> None:
    try:
        await storage.check()
    except StorageError as exc:
        if settings.s3_bucket is None:
            raise StartupError(f"HANDOVER_DATA_DIR: local object storage: {exc}") from None
        endpoint = settings.s3_endpoint_url or "AWS"
        if exc.answered:  # S3 answered: no such bucket, or no access
            raise StartupError(
                f"HANDOVER_S3_BUCKET: bucket {settings.s3_bucket!r} at {endpoint} "
                f"cannot be used: {exc}"
            ) from None
        raise StartupError(
            f"HANDOVER_S3_ENDPOINT_URL: {endpoint} cannot be reached: {exc}"
        ) from None


async def _check_connector(connector: Connector) -> tuple[str, bool] | None:
    """What is wrong with ``connector`` and whether it stops start-up; None when its check passes.

    A misconfiguration (a permanent error: credentials refused, a table missing, a
    connector's own bug) stops it, and so does any failure of a processor that is part
    of the platform (:attr:`Connector.needed_at_start`: its database). A third-party
    processor that merely cannot be reached now does not: its runs retry, and the
    process says so in one warning.
    """
    deadline = asyncio.timeout(CONNECTOR_CHECK_TIMEOUT)
    try:
        async with deadline:
            await connector.check()
    except TimeoutError as exc:
        if deadline.expired():
            problem = f"its check did not answer within {CONNECTOR_CHECK_TIMEOUT:g} s"
            return problem, connector.needed_at_start
        # The connector's own timeout, unmapped: most likely its processor cannot be reached.
        return f"its check timed out: {str(exc) or 'no detail'}", connector.needed_at_start
    except TransientError as exc:
        return str(exc), connector.needed_at_start
    except ConnectorError as exc:
        return str(exc), True
    except Exception as exc:  # a third-party connector's own bug: still one line
        return f"{type(exc).__name__}: {exc}", True
    return None


async def _check_connectors(connectors: Mapping[str, Connector], *, configured: bool) -> None:
    """Stop, naming the first connector that cannot be used at start (all checked at once)."""
    outcomes = await asyncio.gather(*(_check_connector(c) for c in connectors.values()))
    for name, outcome in zip(connectors, outcomes, strict=True):
        if outcome is None:
            continue
        problem, stops = outcome
        if not stops:
            log.warning(
                "connector %s: its processor cannot be reached now (%s); its runs will retry",
                name,
                problem,
            )
            continue
        if configured:
            raise StartupError(f"HANDOVER_CONFIG: [connectors.{name}] cannot be used: {problem}")
        raise StartupError(
            f"HANDOVER_DATA_DIR: the demo connector {name!r} cannot be used: {problem}"
        )


async def reset_demo(settings: Settings) -> None:
    """A fresh demo: the demo platform's data as first seeded, and no jobs.

    Clears the embedded store (jobs, queue, audit log), the archives on local disk and
    the notices in the maildir, and seeds the demo database again. Keeps the signing
    key, the JWT secret (tokens stay valid) and the download links' secret. Refused
    when connectors are configured (not the demo), on a shared Redis, and while a
    ``handover serve`` runs on the data dir.
    """
    if settings.connectors:
        raise SettingsError(
            "HANDOVER_CONFIG: connectors are configured; `handover demo reset` resets the "
            "demo platform only"
        )
    if settings.redis_url is not None:
        raise SettingsError(
            "HANDOVER_REDIS_URL: set; `handover demo reset` clears the embedded store only"
        )
    try:
        async with exclusive_store(settings.data_dir) as store:
            store.clear()
            _reseed_demo(settings)
    except EmbeddedStoreError as exc:
        raise StartupError(str(exc)) from None


def _reseed_demo(settings: Settings) -> None:
    """Delete the archives on local disk, the notices sent and the demo database, then
    seed it again."""
    from jobs.notices import maildir_path  # it builds on these resources

    if settings.s3_bucket is None:
        shutil.rmtree(settings.data_dir / "objects", ignore_errors=True)
    mail = maildir_path(settings)
    if mail is not None:
        shutil.rmtree(mail, ignore_errors=True)
    database = settings.data_dir / DEMO_DATABASE
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    seed_demo_database(database)
