"""The ``handover`` command line.

::

    handover serve   [--host H] [--port P]   API and worker in one process (embedded default)
    handover demo reset                      the demo platform's data and jobs as new
    handover api     [--host H] [--port P]   the API alone, on shared Redis and S3
    handover worker  [--burst]               a worker alone, on shared Redis and S3
    handover token   --sub S [--role R] [--ttl 1h] [--email E]
    handover verify  FILE (--key FILE | --keys-url URL)   an export archive, a receipt or a
                                             breach report
    handover connectors new NAME [--dir DIR] | list | check   see service/cli/connectors.py
    handover jobs list | show ID | retry ID | cancel ID | extend ID   see service/cli/jobs.py
    handover audit verify                    check the audit log's hash chain
    handover storage reconcile [--dry-run] [--min-age 1h]   delete archives and staged parts
                                             no job owns, see service/cli/storage.py
    handover epoch show | acknowledge        whether Redis lost its data, see service/cli/epoch.py
    handover breach list | show | record | update | notified | report | export | notify | notices
                                             the breach register, see service/cli/breaches.py
    handover disclosure record | show | extend | link   disclosures an authority's order
                                             compels, see service/cli/disclosures.py
    handover report  --from DATE --to DATE [--json | --csv]   how the period's requests were
                                             handled (the DPO's report), see service/cli/report.py
    handover export [SUBJECT] [--wait] [--download FILE]   over the API (HANDOVER_URL, _TOKEN)

A bad setting or argument prints one line naming it and exits 2; so does a start-up
problem (Redis, the embedded store, object storage or a connector unusable, the port
taken), with exit 1. ``serve`` and ``api`` bind their port first and print their banner
(tokens, and where jobs and archives are kept) only once everything has started.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from connectors.errors import ConnectorLoadError
from jobs.archive.signing import SignatureError
from jobs.audit import AuditLog
from jobs.queue import API_RETRIES, connect
from jobs.resources import NAMESPACE, StartupError, open_resources, probe_redis, reset_demo
from jobs.settings import Settings, SettingsError, parse_duration
from service import logs
from service.cli import breaches as breaches_cli
from service.cli import connectors as connectors_cli
from service.cli import disclosures as disclosures_cli
from service.cli import epoch as epoch_cli
from service.cli import jobs as jobs_cli
from service.cli import malloc
from service.cli import report as report_cli
from service.cli import storage as storage_cli
from service.roles import Role

if TYPE_CHECKING:
    from aiohttp import web

EXIT_USAGE = 2
#: Files 0600, directories 0700.
PRIVATE_UMASK = 0o077
EXIT_STARTUP = 1


class CommandError(Exception):
    """A command cannot go on; the message is printed as one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handover", description="Data subject requests, kept.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("serve", "run the API and a worker in one process (embedded backends by default)"),
        ("api", "run the API alone (needs HANDOVER_REDIS_URL)"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8080)
    demo = commands.add_parser(
        "demo", help="the demo platform (`handover serve` with no connectors)"
    )
    demo_commands = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    demo_commands.add_parser(
        "reset",
        help="a fresh demo: the demo database seeded again, and no jobs",
        description=(
            "Seed the demo platform's database (DATA_DIR/demo-platform.sqlite3) again and "
            "clear the embedded store: every job, the queue and the audit log, and the "
            "archives on local disk. Keeps the signing key and the JWT secret, so tokens "
            "stay valid. Refused while a `handover serve` runs on the data dir, when "
            "connectors are configured (HANDOVER_CONFIG) or on a shared Redis."
        ),
    )
    worker = commands.add_parser("worker", help="run a worker (needs HANDOVER_REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    token = commands.add_parser("token", help="print a signed bearer token")
    token.add_argument("--sub", required=True, help="the subject (token's sub claim)")
    token.add_argument(
        "--role", action="append", choices=[r.value for r in Role], help="repeatable"
    )
    token.add_argument("--ttl", default="1h", help="lifetime, e.g. 15m, 1h, 7d (default 1h)")
    token.add_argument(
        "--email", help="the subject's email, as a verified claim (email_verified: true)"
    )
    verify = commands.add_parser(
        "verify", help="check an export archive's checksums and signature, or a receipt's"
    )
    verify.add_argument("archive", type=Path, metavar="FILE")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", type=Path, help="public key file: PEM, JWK or JWK set")
    source.add_argument("--keys-url", help="the service's /v1/keys URL")
    connectors_cli.add_parser(commands)
    jobs_cli.add_parser(commands)
    audit = commands.add_parser(
        "audit", help="the hash-chained audit log (needs HANDOVER_REDIS_URL)"
    )
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    audit_commands.add_parser("verify", help="check that no entry was changed, inserted or removed")
    storage_cli.add_parser(commands)
    epoch_cli.add_parser(commands)
    breaches_cli.add_parser(commands)
    disclosures_cli.add_parser(commands)
    report_cli.add_parser(commands)
    return parser


def _with_public_url(settings: Settings, host: str, port: int) -> Settings:
    if settings.public_url:
        return settings
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    return settings.model_copy(update={"public_url": f"http://{shown}:{port}"})


def _where(settings: Settings) -> str:
    """Where jobs and archives really are kept, as the banner names them."""
    if settings.redis_url is None:
        jobs = f"jobs in the embedded store at {(settings.data_dir / 'store').absolute()}"
    else:
        parts = urlsplit(settings.redis_url.reveal())
        jobs = f"jobs in Redis at {parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    if settings.s3_bucket is None:
        archives = f"archives on local disk at {(settings.data_dir / 'objects').absolute()}"
    else:
        endpoint = settings.s3_endpoint_url or "AWS"
        archives = f"archives in S3 bucket {settings.s3_bucket} at {endpoint}"
    return f"{jobs}; {archives}"


def _banner(settings: Settings, base_url: str, *, tokens: bool) -> str:
    served = (
        f"Handover is serving on {base_url}; API docs at {base_url}/docs\n"
        f"Keeping {_where(settings)}\n"
    )
    from service.app import jwt_secret  # the API's modules: see _serve
    from service.auth import TokenAuthority

    secret = jwt_secret(settings)
    if secret is None or not tokens:  # tokens come from the identity provider, or none asked
        return served
    authority = TokenAuthority.from_settings(settings, secret)
    subject = authority.issue("alice", [Role.SUBJECT.value], 24 * 3600)
    support = authority.issue("support-1", [Role.SUPPORT.value], 24 * 3600)
    privacy = ""
    if settings.embedded_redis and not settings.connectors:
        privacy = f"Privacy center (sign in as a demo subject): {base_url}/privacy/sign-in\n"
    elif settings.oidc_issuer is not None:
        privacy = f"Privacy center: {base_url}/privacy\n"
    return (
        f"{served}"
        f"{privacy}"
        f"Subject token (alice, 24 h):  {subject}\n"
        f"Support token (24 h):         {support}\n"
        "Ask for an export:\n"
        f"  curl -si -X POST {base_url}/v1/exports -H 'Authorization: Bearer {subject}' "
        "-H 'Content-Type: application/json' -d '{}'\n"
    )


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a taken port stops us first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server(
            (host, port),
            family=family,
            backlog=128,
            dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
        )
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(f"--port {port}: cannot listen on {host}:{port}: {reason}") from None


def _serve(settings: Settings, host: str, port: int, *, with_worker: bool) -> None:
    if not with_worker and settings.embedded_redis:
        raise CommandError(
            "HANDOVER_REDIS_URL: `handover api` needs a shared Redis; "
            "`handover serve` runs on the embedded store"
        )
    # The API's modules (routes, pages, OpenAPI) are imported by the commands that serve
    # it, not by the module: a `handover worker` would keep them in memory unused.
    from service.app import create_app

    listening = _bind(host, port)
    try:
        port = listening.getsockname()[1]  # the one the system chose for --port 0
        settings = _with_public_url(settings, host, port)
        app = create_app(settings, run_worker=with_worker)
        base_url = settings.public_url or f"http://{host}:{port}"
        banner = _banner(settings, base_url, tokens=with_worker)
    except BaseException:
        listening.close()
        raise
    asyncio.run(_run_app(app, listening, banner))


async def _run_app(app: web.Application, listening: socket.socket, banner: str) -> None:
    """Start everything, then listen and print the banner; stop on SIGTERM or SIGINT."""
    from aiohttp import web  # the API's modules: see _serve
    from aiohttp.log import access_logger

    from service.accesslog import AccessLogger

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    runner = web.AppRunner(app, access_log_class=AccessLogger, access_log=access_logger)
    try:
        await runner.setup()
        await web.SockSite(runner, listening).start()
        freeze_startup_objects()
        print(banner, flush=True)
        await stopping.wait()
    finally:
        await runner.cleanup()
        listening.close()


def freeze_startup_objects() -> None:
    """Keep what a started process holds for its life (modules, settings, clients, routes:
    about 90,000 objects in the API's) out of the garbage collector's full passes.

    Each full pass walks every tracked object: 49 ms in a started API process, a pause of
    whatever request is being answered; under the API benchmark's POST load, 62–86 ms
    each, 1.3–5.2 ms once frozen (README). Frozen after a collection of what starting
    left, they are never walked again (``gc.freeze``); a full pass then walks only what
    the process made since.
    """
    gc.collect()
    gc.freeze()


async def _run_worker(settings: Settings, burst: bool) -> None:
    """A worker, once Redis, object storage and every connector have been found usable."""
    if settings.redis_url is None:
        raise CommandError("HANDOVER_REDIS_URL: a worker needs the shared Redis the API uses")
    # The worker's modules (the pipelines, the archive writer), like the API's (see _serve),
    # are imported by the commands that run them: every other command starts faster.
    from jobs.worker import create_worker

    await probe_redis(settings.redis_url.reveal())
    redis = await connect(settings.redis_url.reveal())
    try:
        async with open_resources(settings, redis=redis) as resources:
            worker = create_worker(settings, redis=redis, resources=resources, burst=burst)
            freeze_startup_objects()
            try:
                await worker.async_run()
            except asyncio.CancelledError:
                pass  # SIGTERM/SIGINT: arq cancelled its main task after re-queueing running jobs
            finally:
                await worker.close()
    finally:
        await redis.aclose()


async def _demo_reset(settings: Settings) -> None:
    await reset_demo(settings)
    print(f"The demo in {settings.data_dir.absolute()} is as new: demo data seeded, no jobs")


def _token(
    settings: Settings, sub: str, roles: list[str] | None, ttl: str, email: str | None
) -> None:
    try:
        seconds = int(parse_duration(ttl).total_seconds())
    except ValueError as exc:
        raise CommandError(f"--ttl: {exc}") from None
    if seconds < 1:
        raise CommandError("--ttl: must be at least one second")
    if email is not None and ("@" not in email or email != email.strip()):
        raise CommandError(f"--email: {email!r} is not an email address")
    from service.app import jwt_secret  # the API's modules: see _serve
    from service.auth import TokenAuthority

    authority = TokenAuthority.from_settings(settings, jwt_secret(settings))
    print(authority.issue(sub, roles or [Role.SUBJECT.value], seconds, email=email))


def _verify(archive: Path, key: Path | None, keys_url: str | None) -> int:
    from jobs.archive.verify import fetch_keys, load_keys, verify_file  # see _run_worker

    keys = load_keys(key) if key is not None else fetch_keys(keys_url or "")
    result = verify_file(archive, keys)
    if result.ok and result.report is not None:
        breach = result.report["breach"]["id"]
        version = result.report["version"]
        print(
            f"OK: {archive}: breach report of breach {breach} (version {version}), "
            f"signed by key {result.key_id}"
        )
        return 0
    if result.ok and result.receipt is not None:
        job = result.receipt["job"]["id"]
        kind = result.receipt["kind"]
        signed = f"receipt of job {job}, signed by key {result.key_id}"
        if result.receipt["job"].get("dry_run") is True:
            done = "restricted" if kind == "restriction" else "erased"
            print(f"OK: {archive}: dry-run {kind} {signed}: nothing was {done}")
        else:
            print(f"OK: {archive}: {kind} {signed}")
        return 0
    if result.ok:
        print(f"OK: {archive}: {result.summary}")
        return 0
    for problem in result.problems:
        print(f"FAIL: {archive}: {problem}", file=sys.stderr)
    return 1


async def _audit_verify(settings: Settings) -> int:
    if settings.redis_url is None:
        raise CommandError("HANDOVER_REDIS_URL: the audit log lives in the shared Redis")
    redis = await connect(settings.redis_url.reveal(), retries=API_RETRIES)
    try:
        result = await AuditLog(redis, NAMESPACE).verify()
    finally:
        await redis.aclose()
    if result.ok:
        print(f"OK: {result.entries} audit entries, chain intact, head {result.head}")
        return 0
    for problem in result.problems:
        print(f"FAIL: audit log: {problem}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``handover`` console script."""
    args = _parser().parse_args(argv)
    logs.configure(logging.INFO)
    try:
        if args.command == "verify":
            return _verify(args.archive, args.key, args.keys_url)
        if args.command == "connectors":
            return connectors_cli.run(args)  # writes a developer's source files: usual modes
        # Whatever Handover keeps (archives, staged data, the demo database, the embedded
        # store, keys) holds personal data or secrets: readable by its own user only.
        os.umask(PRIVATE_UMASK)
        if args.command in jobs_cli.COMMANDS:
            return jobs_cli.run(args)
        if args.command == "breach":
            return breaches_cli.run(args)
        if args.command == "disclosure":
            return disclosures_cli.run(args)
        if args.command == "report":
            return report_cli.run(args)
        if args.command == "storage":
            return storage_cli.run(args)
        if args.command == "epoch":
            return epoch_cli.run(args)
        settings = Settings.load()
        if args.command == "serve":
            _serve(settings, args.host, args.port, with_worker=True)
        elif args.command == "api":
            _serve(settings, args.host, args.port, with_worker=False)
        elif args.command == "worker":
            malloc.tune()
            asyncio.run(_run_worker(settings, args.burst))
        elif args.command == "demo":
            asyncio.run(_demo_reset(settings))
        elif args.command == "token":
            _token(settings, args.sub, args.role, args.ttl, args.email)
        elif args.command == "audit":
            return asyncio.run(_audit_verify(settings))
    except (SettingsError, CommandError, SignatureError, ConnectorLoadError) as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 130
    return 0
