"""The application factory: ``create_app(settings)`` and nothing global."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version

from aiohttp import web

from jobs.commands import Commands
from jobs.epoch import Epochs, EpochWatch
from jobs.queue import connect
from jobs.resources import Resources, open_resources
from jobs.settings import Settings, SettingsError
from jobs.worker import SHUTDOWN_GRACE_SECONDS, create_worker
from service.api.handlers import MAX_BODY_BYTES
from service.api.middleware import nosniff, problem_middleware
from service.api.operations import add_routes
from service.appkeys import AUTHORITY, COMMANDS, RESOURCES, SETTINGS
from service.auth import TokenAuthority, load_or_create_secret
from service.breach_pages import add_breach_pages
from service.dashboard import add_dashboard_routes
from service.docs import add_doc_routes
from service.idempotency import idempotency_middleware
from service.privacy import add_privacy_routes
from service.proxies import forwarded_middleware
from service.ratelimit import rate_limit_middleware
from service.replies import add_reply_routes
from service.report_pages import add_report_pages


def jwt_secret(settings: Settings) -> str | None:
    """The HS256 secret: configured, or in the embedded mode kept in the data dir.

    ``None`` when only the identity provider's keys (``HANDOVER_JWKS_URL``) verify tokens.
    """
    if settings.jwt_secret is not None:
        return settings.jwt_secret.reveal()
    if settings.embedded_redis:
        path = settings.data_dir / "jwt-secret"
        try:
            return load_or_create_secret(path)
        except OSError as exc:
            raise SettingsError(
                f"HANDOVER_DATA_DIR: cannot keep the JWT secret in {path}: {exc}"
            ) from None
    if settings.jwks_url is not None:
        return None
    raise SettingsError(
        "HANDOVER_JWT_SECRET or HANDOVER_JWKS_URL: one is required when Handover runs on a "
        "shared Redis"
    )


def create_app(
    settings: Settings | None = None,
    *,
    resources: Resources | None = None,
    run_worker: bool = False,
) -> web.Application:
    """The Handover API; with ``run_worker`` a worker runs inside the same process."""
    settings = settings or Settings.load()
    # Each middleware wraps every request: one that has nothing to do is left out.
    middlewares = [
        *([forwarded_middleware] if settings.trusted_proxies else []),
        problem_middleware,
        *([rate_limit_middleware] if settings.rate_limit else []),
        idempotency_middleware,
    ]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(nosniff)
    app[SETTINGS] = settings
    secret = jwt_secret(settings)
    app[AUTHORITY] = TokenAuthority.from_settings(settings, secret)
    app.cleanup_ctx.append(_resources_ctx(resources))
    app.cleanup_ctx.append(_epoch_ctx)
    if run_worker:
        app.cleanup_ctx.append(_worker_ctx)
    add_routes(app)
    add_doc_routes(app, version("handover"))
    add_reply_routes(app)
    # Without a shared secret the dashboard's and privacy center's keys are this process's own.
    page_secret = secret or secrets.token_urlsafe(48)
    add_dashboard_routes(app, page_secret)
    add_breach_pages(app, page_secret)
    add_report_pages(app, page_secret)
    add_privacy_routes(app, page_secret)
    return app


def _resources_ctx(
    given: Resources | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            resources = given
            if resources is None:
                resources = await stack.enter_async_context(open_resources(app[SETTINGS]))
            app[RESOURCES] = resources
            app[COMMANDS] = Commands(resources)
            yield

    return resources_ctx


async def _epoch_ctx(app: web.Application) -> AsyncIterator[None]:
    """Join Redis's epoch, publish the signing key, and watch for Redis losing its data.

    The API signs nothing itself: it publishes the key workers sign with when they
    share it (``HANDOVER_SIGNING_KEY_FILE``), at start and again after a loss, so that
    ``/v1/keys`` lists it even before a worker does.
    """
    resources = app[RESOURCES]

    async def publish_key() -> None:
        if resources.settings.signing_key_file is not None:
            await resources.keyring.publish(resources.signer)

    watch = EpochWatch(Epochs(resources.redis, resources.store.ns), on_lost=publish_key)
    await watch.start()
    await publish_key()
    task = asyncio.create_task(watch.watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    resources = app[RESOURCES]
    settings = app[SETTINGS]
    # The worker polls on a patient connection of its own that rides out a Redis restart.
    redis = resources.redis
    if settings.redis_url is not None:
        redis = await connect(settings.redis_url.reveal())
    worker = create_worker(
        settings, redis=redis, resources=resources, handle_signals=False, watch_epoch=False
    )
    task = asyncio.create_task(worker.async_run())
    yield
    # As a `handover worker` on SIGTERM: running work gets the grace period.
    await worker.stop(task, SHUTDOWN_GRACE_SECONDS)
