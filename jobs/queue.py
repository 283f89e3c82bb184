"""The work queue: arq on Redis, with JSON payloads and connections that survive outages.

A client tells the workers of its own process when it has queued a task due now
(:meth:`QueueClient.queued_due`): a worker listening polls at once instead of at its next
turn, so that a chain of tasks (an export's runs, then its finish) does not wait half a
poll delay at each hop. Workers in other processes find the task at their next poll.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import orjson
from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job, serialize_job
from arq.utils import timestamp_ms, to_ms, to_unix_ms
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

QUEUE_NAME = "handover:queue"
#: What Redis raises when it cannot be reached: callers answer "try again shortly".
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (ConnectionError, TimeoutError)
#: Where each worker reports that it is alive (arq's health check), read by readiness checks.
HEALTH_CHECK_KEY = "handover:worker:health"

log = logging.getLogger("handover.queue")


def _fallback(value: Any) -> Any:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def serialize(payload: dict[str, Any]) -> bytes:
    """arq payloads as JSON: readable in Redis, and no pickle to execute.

    A failed task's result is its exception, kept as its type and message.
    """
    return orjson.dumps(payload, default=_fallback)


def deserialize(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`serialize`."""
    result: dict[str, Any] = orjson.loads(data)
    return result


#: Workers ride out a Redis restart; the API gives up within about a second and answers 503.
PATIENT_RETRIES = 20
API_RETRIES = 3
#: ``redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]``: Sentinels
#: that name the current primary of ``master``; the password is the primary's.
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_SENTINEL_FORM = "redis+sentinel://[[user]:password@]host:port[,host:port…]/master-name[/db]"


def redis_settings(url: str, retries: int = PATIENT_RETRIES) -> RedisSettings:
    """arq settings for ``url`` that retry a lost connection ``retries`` times, backing off.

    ``redis://``, ``rediss://`` and ``unix://`` name one server; ``redis+sentinel://``
    names Sentinels, asked for the current primary on every (re)connection. A malformed
    URL raises ``ValueError`` saying what is wrong, without repeating a password.
    """
    if urlsplit(url).scheme == SENTINEL_SCHEME:
        settings = _sentinel_settings(url)
    else:
        settings = _server_settings(url)
    settings.retry = Retry(_backoff(retries), retries)
    settings.retry_on_error = [ConnectionError, TimeoutError, OSError]
    settings.retry_on_timeout = True
    settings.conn_timeout = 2
    settings.conn_retries = 5
    return settings


def _backoff(retries: int) -> ExponentialBackoff:
    """Patient clients wait up to 2 s between tries, the API's up to 0.5 s."""
    return ExponentialBackoff(cap=2.0 if retries > API_RETRIES else 0.5, base=0.05)


def _server_settings(url: str) -> RedisSettings:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("expected a redis://, rediss://, unix:// or redis+sentinel:// URL")
    try:
        return RedisSettings.from_dsn(url)
    except ValueError:
        raise ValueError(
            "expected a port from 1 to 65535 and a whole database number (redis://host:6379/0)"
        ) from None


def _sentinel_settings(url: str) -> RedisSettings:
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"a Sentinel URL takes no ?query or #fragment: {_SENTINEL_FORM}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    master, _, database = parts.path.removeprefix("/").partition("/")
    if not master:
        raise ValueError(f"no master name: {_SENTINEL_FORM}")
    database = database.removesuffix("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError(f"the database must be a whole number: {_SENTINEL_FORM}")
    return RedisSettings(
        host=[_sentinel_address(n, host) for n, host in enumerate(hosts.split(","), 1)],
        sentinel=True,
        sentinel_master=unquote(master),
        database=int(database or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _sentinel_address(number: int, host: str) -> tuple[str, int]:
    parts = urlsplit(f"//{host}")
    try:
        port = SENTINEL_PORT if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not parts.hostname or not 0 < port < 65536:
        raise ValueError(f"Sentinel {number} is not host[:port], port 1 to 65535: {_SENTINEL_FORM}")
    return parts.hostname, port


def describe(settings: RedisSettings) -> str:
    """Where ``settings`` point, for messages: no password."""
    if isinstance(settings.host, list):
        sentinels = ",".join(f"{host}:{port}" for host, port in settings.host)
        return f"master {settings.sentinel_master!r} of Sentinels {sentinels}"
    return settings.unix_socket_path or f"{settings.host}:{settings.port}"


#: Queue an arq task as ``ArqRedis.enqueue_job`` does, in one step: KEYS[1] its job key,
#: KEYS[2] its result key, KEYS[3] the queue; ARGV: the payload, its expiry (ms), the
#: score (ms) and the task's id. 1 when queued; 0 when a task or a result of that id is
#: there already, as one sent again after its answer was lost finds itself.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


class QueueClient(ArqRedis):
    """arq's Redis client, whose enqueue is one script, not a transaction under ``WATCH``.

    arq's ``enqueue_job`` checks a job's keys under ``WATCH``: three round trips, and
    redis-py reports a connection lost after ``WATCH`` as ``WatchError``, which it never
    retries (raised by ``EXEC``, arq took it for "the job was enqueued meanwhile" and
    returned ``None`` with nothing queued). Here the check and the writes are one script,
    which the connection's own retries send again when Redis goes away; still failing, it
    raises ``ConnectionError`` (Redis is away), which callers already answer.
    """

    async def enqueue_job(
        self,
        function: str,
        *args: Any,
        _job_id: str | None = None,
        _queue_name: str | None = None,
        _defer_until: datetime | None = None,
        _defer_by: int | float | timedelta | None = None,
        _expires: int | float | timedelta | None = None,
        _job_try: int | None = None,
        **kwargs: Any,
    ) -> Job | None:
        """arq's ``enqueue_job``, its arguments and answer: ``None`` only when a task or a
        result with the id is there already (a task given no ``_job_id`` gets one here, so
        that one sent again after its answer was lost is recognised, not queued twice)."""
        if _defer_until and _defer_by:
            raise RuntimeError("use either 'defer_until' or 'defer_by' or neither, not both")
        job_id = _job_id or uuid.uuid4().hex
        queue_name = _queue_name or self.default_queue_name
        now = timestamp_ms()
        if _defer_until is not None:
            score = to_unix_ms(_defer_until)
        else:
            score = now + (to_ms(_defer_by) or 0)
        expires = to_ms(_expires) or score - now + self.expires_extra_ms
        payload = serialize_job(
            function, args, kwargs, _job_try, now, serializer=self.job_serializer
        )
        keys = [job_key_prefix + job_id, result_key_prefix + job_id, queue_name]
        if not await self._enqueue(keys=keys, args=[payload, expires, score, job_id]):
            return None
        if score <= timestamp_ms():
            self.queued_due(queue_name)
        return Job(job_id, redis=self, _queue_name=queue_name, _deserializer=self.job_deserializer)

    @cached_property
    def _enqueue(self) -> Any:
        return self.register_script(_ENQUEUE)

    def on_queued_due(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Have ``listener(queue_name)`` called each time this client queues a task due now
        (:meth:`queued_due`); returns what stops it. A worker of this process listens, to
        poll at once rather than at its next turn (:mod:`jobs.arqworker`)."""
        self._due_listeners.append(listener)
        return lambda: self._due_listeners.remove(listener)

    def queued_due(self, queue_name: str) -> None:
        """Tell the listeners that a task due now was queued on ``queue_name``.

        :meth:`enqueue_job` tells them itself; code that queues tasks in a script or a
        transaction of its own (:meth:`jobs.store.JobStore.create`) calls this once they are.
        """
        for listener in list(self._due_listeners):
            listener(queue_name)

    @cached_property
    def _due_listeners(self) -> list[Callable[[str], None]]:
        return []


class SentinelConnection(SentinelManagedConnection):
    """A connection to the primary the Sentinels name, asking them again on every retry.

    redis-py's own tries each address it was given with the whole retry budget
    (twenty tries, about 33 s) before it asks the Sentinels again: after a failover
    every connection kept knocking on the dead primary. Here one try per address; the
    retries go round the Sentinels.
    """

    async def connect_to(self, address: tuple[str, int]) -> None:
        """Connect to ``address`` once; the caller's retry asks the Sentinels again."""
        patient, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = patient


async def connect(url: str, retries: int = PATIENT_RETRIES) -> ArqRedis:
    """A Redis client that can also enqueue arq jobs; for Sentinel URLs, of the current primary.

    Every process opens Redis from ``HANDOVER_REDIS_URL`` through here. Lost connections
    are retried ``retries`` times, backing off; a failover is followed, since each new
    connection asks the Sentinels where the primary is. The first ``PING`` is tried
    ``conn_retries`` more times, a second apart.
    """
    settings = redis_settings(url, retries)
    client = _client(settings)
    client.job_serializer = serialize
    client.job_deserializer = deserialize
    client.default_queue_name = QUEUE_NAME
    await _first_ping(client, settings)
    return client


async def probe(url: str) -> str:
    """Reach the Redis ``url`` names once, no retries (through Sentinel, its primary);
    where it is, for messages. Raises ``ValueError`` for a malformed URL, and what the
    connection raised when it cannot be used."""
    settings = dataclasses.replace(redis_settings(url, retries=0), conn_retries=0)
    where = describe(settings)
    client = _client(settings)
    try:
        await _first_ping(client, settings)  # closes the client when it raises
    except MasterNotFoundError:
        raise ConnectionError(await _why_no_primary(settings)) from None
    await client.aclose()
    return where


async def _why_no_primary(settings: RedisSettings) -> str:
    """Why the Sentinels named no primary, each Sentinel's part in a few words."""
    assert isinstance(settings.host, list)
    causes = []
    for host, port in settings.host:
        sentinel = Redis(
            host=host,
            port=port,
            socket_connect_timeout=settings.conn_timeout,
            socket_timeout=settings.conn_timeout,
        )
        try:
            await sentinel.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "MASTER", settings.sentinel_master
            )
            causes.append(f"{host}:{port} knows it but names no primary that is up")
        except (RedisError, OSError) as exc:
            causes.append(f"{host}:{port} {_sentinel_failure(exc)}")
        finally:
            await sentinel.aclose()
    return "no Sentinel named its primary (" + "; ".join(causes) + ")"


def _sentinel_failure(exc: BaseException) -> str:
    """What went wrong asking one Sentinel, in a few words."""
    if isinstance(exc, ResponseError):
        return "does not know that master" if "no such master" in str(exc).lower() else "refused"
    if isinstance(exc, TimeoutError | builtins.TimeoutError):
        return "did not answer in time"
    if isinstance(exc.__context__, ConnectionRefusedError):
        return "refused the connection"
    return "cannot be reached"


def _client(settings: RedisSettings) -> QueueClient:
    """The client arq's ``create_pool`` makes, but retrying through Sentinel too.

    arq gives a Sentinel-managed client none of ``settings``' retries or timeouts.
    """
    options: dict[str, Any] = {
        "db": settings.database,
        "username": settings.username,
        "password": settings.password,
        "socket_connect_timeout": settings.conn_timeout,
        "retry": settings.retry,
        "retry_on_timeout": settings.retry_on_timeout,
        "retry_on_error": settings.retry_on_error,
        "max_connections": settings.max_connections,
        "encoding": "utf8",
    }
    if isinstance(settings.host, list):
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            settings.host,
            sentinel_kwargs={
                "socket_connect_timeout": settings.conn_timeout,
                "socket_timeout": settings.conn_timeout,
            },
        )
        primary = sentinels.master_for(
            settings.sentinel_master,
            QueueClient,
            connection_class=SentinelConnection,
            **options,
        )
        return cast(QueueClient, primary)
    return QueueClient(
        host=settings.host,
        port=settings.port,
        unix_socket_path=settings.unix_socket_path,
        ssl=settings.ssl,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_ca_data=settings.ssl_ca_data,
        ssl_check_hostname=settings.ssl_check_hostname,
        **options,
    )


async def _first_ping(client: QueueClient, settings: RedisSettings) -> None:
    for remaining in range(settings.conn_retries, -1, -1):
        try:
            await client.ping()
            return
        except (RedisError, OSError) as exc:  # OSError: the builtin TimeoutError too
            if not remaining:
                await client.aclose()
                raise
            log.warning(
                "Redis (%s) does not answer (%s: %s); %d retries left",
                describe(settings),
                type(exc).__name__,
                exc,
                remaining,
            )
            await asyncio.sleep(settings.conn_retry_delay)


class Queue:
    """The arq work queue, as seen from outside the workers."""

    def __init__(self, redis: ArqRedis, name: str = QUEUE_NAME) -> None:
        # redis-py annotates async results as sync-or-async unions; Any keeps awaits honest.
        self.redis: Any = redis
        self.name = name

    async def depth(self) -> int:
        """Tasks in the queue: waiting, deferred or running (arq drops a task when it ends)."""
        depth: int = await self.redis.zcard(self.name)
        return depth
