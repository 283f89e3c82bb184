"""The ``handover`` command line.

::

    handover serve   [--host H] [--port P]   API and worker in one process (embedded default)
    handover api     [--host H] [--port P]   the API alone, on shared Redis and S3
    handover worker  [--burst]               a worker alone, on shared Redis and S3
    handover token   --sub S [--role R] [--ttl 1h] [--email E]
    handover verify  FILE (--key FILE | --keys-url URL)   an export archive or a receipt
    handover connectors new NAME [--dir DIR] | list | check   see service/cli/connectors.py
    handover jobs list | show ID | retry ID | cancel ID | extend ID   see service/cli/jobs.py
    handover audit verify                    check the audit log's hash chain
    handover export [SUBJECT] [--wait] [--download FILE]   over the API (HANDOVER_URL, _TOKEN)

A bad setting or argument prints one line naming it and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from connectors.errors import ConnectorLoadError
from jobs.archive.signing import SignatureError
from jobs.archive.verify import fetch_keys, load_keys, verify_file
from jobs.audit import AuditLog
from jobs.queue import API_RETRIES, connect
from jobs.resources import NAMESPACE
from jobs.settings import Settings, SettingsError, parse_duration
from jobs.worker import create_worker
from service import logs
from service.app import create_app, jwt_secret
from service.auth import Role, TokenAuthority
from service.cli import connectors as connectors_cli
from service.cli import jobs as jobs_cli

EXIT_USAGE = 2


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
    return parser


def _with_public_url(settings: Settings, host: str, port: int) -> Settings:
    if settings.public_url:
        return settings
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    return settings.model_copy(update={"public_url": f"http://{shown}:{port}"})


def _banner(settings: Settings, base_url: str) -> str:
    secret = jwt_secret(settings)
    mode = (
        "embedded store and local disk" if settings.embedded_redis else "Redis and object storage"
    )
    if secret is None:  # tokens come from the identity provider: none to print
        return f"Handover is serving on {base_url} ({mode}); API docs at {base_url}/docs\n"
    authority = TokenAuthority.from_settings(settings, secret)
    subject = authority.issue("alice", [Role.SUBJECT.value], 24 * 3600)
    support = authority.issue("support-1", [Role.SUPPORT.value], 24 * 3600)
    return (
        f"Handover is serving on {base_url} ({mode}); API docs at {base_url}/docs\n"
        f"Subject token (alice, 24 h):  {subject}\n"
        f"Support token (24 h):         {support}\n"
        "Ask for an export:\n"
        f"  curl -si -X POST {base_url}/v1/exports -H 'Authorization: Bearer {subject}' "
        "-H 'Content-Type: application/json' -d '{}'\n"
    )


def _serve(settings: Settings, host: str, port: int, *, with_worker: bool) -> None:
    settings = _with_public_url(settings, host, port)
    if not with_worker and settings.embedded_redis:
        raise CommandError(
            "HANDOVER_REDIS_URL: `handover api` needs a shared Redis; "
            "`handover serve` runs on the embedded store"
        )
    app = create_app(settings, run_worker=with_worker)
    base_url = settings.public_url or f"http://{host}:{port}"
    if with_worker:
        banner = _banner(settings, base_url)

        async def announce(app: web.Application) -> None:
            print(banner, flush=True)

        app.on_startup.append(announce)
    web.run_app(app, host=host, port=port, print=None, access_log_class=logs.AccessLogger)


async def _run_worker(settings: Settings, burst: bool) -> None:
    if settings.redis_url is None:
        raise CommandError("HANDOVER_REDIS_URL: a worker needs the shared Redis the API uses")
    redis = await connect(settings.redis_url.reveal())
    worker = create_worker(settings, redis=redis, burst=burst)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass  # SIGTERM/SIGINT: arq cancelled its main task after re-queueing running jobs
    finally:
        await worker.close()


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
    authority = TokenAuthority.from_settings(settings, jwt_secret(settings))
    print(authority.issue(sub, roles or [Role.SUBJECT.value], seconds, email=email))


def _verify(archive: Path, key: Path | None, keys_url: str | None) -> int:
    keys = load_keys(key) if key is not None else fetch_keys(keys_url or "")
    result = verify_file(archive, keys)
    if result.ok and result.receipt is not None:
        job = result.receipt["job"]["id"]
        kind = result.receipt["kind"]
        print(f"OK: {archive}: {kind} receipt of job {job}, signed by key {result.key_id}")
        return 0
    if result.ok:
        print(
            f"OK: {archive}: {result.files} files match the manifest, signed by key {result.key_id}"
        )
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
            return connectors_cli.run(args)
        if args.command in jobs_cli.COMMANDS:
            return jobs_cli.run(args)
        settings = Settings.load()
        if args.command == "serve":
            _serve(settings, args.host, args.port, with_worker=True)
        elif args.command == "api":
            _serve(settings, args.host, args.port, with_worker=False)
        elif args.command == "worker":
            asyncio.run(_run_worker(settings, args.burst))
        elif args.command == "token":
            _token(settings, args.sub, args.role, args.ttl, args.email)
        elif args.command == "audit":
            return asyncio.run(_audit_verify(settings))
    except (SettingsError, CommandError, SignatureError, ConnectorLoadError) as exc:
        print(f"handover: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0
