"""Webhooks: the platform is told when a request changes state, so it can tell people.

Each notification is a JSON POST to every configured URL, signed with
HMAC-SHA256 over ``"{timestamp}.{body}"`` in the header
``Handover-Signature: t=<unix seconds>,v1=<hex>`` (reject old timestamps to stop
replays), and delivered by a worker task retried with exponential backoff and
jitter. Targets are checked twice: at start-up a URL naming a link-local or cloud metadata
address is refused (unless ``HANDOVER_WEBHOOK_ALLOW_LINK_LOCAL``), and at delivery
the host's resolved addresses are checked again (a name that resolves there is
refused) and redirects are not followed (:mod:`jobs.webhook_sender`, the HTTP side, which
only a delivery imports). Tasks and logs name a URL by its digest or
without its query, so a token in a webhook URL never reaches a log. Event types::

    job.created  job.succeeded  job.failed  job.canceled  job.refused
    job.needs_attention       a processor could not be asked: support supplies identifiers
    job.awaiting_information  support asked the subject for information (jobs.lifecycle)
    job.awaiting_decision     an objection or a rectification waits for support's decision
    job.expiring_soon   an export's archive expires within a day, not yet downloaded
    job.at_risk         a live request has under a quarter of its time left
    job.processor_overdue  a processor served by hand (email, manual) is late with its reply
    breach.at_risk      a breach not yet notified to the authority, 48 h after awareness
    breach.overdue      the same, past the 72 hours (jobs.breaches: a ``breach`` payload)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from jobs.model import Job, iso, utcnow

SIGNATURE_HEADER = "Handover-Signature"
DELIVER_TASK = "deliver_webhook"
MAX_TRIES = 10


#: Cloud metadata services by name (their addresses are link-local, refused anyway).
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})
#: Cloud metadata services outside link-local, each by its one address: AWS's over IPv6,
#: and Alibaba Cloud's (inside 100.64.0.0/10, carrier-grade NAT, which real networks use).
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)


class DeliveryFailed(Exception):
    """The receiver did not accept the notification this time."""


def digest(url: str) -> str:
    """How tasks and logs name a webhook URL without revealing it (its query may hold a token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def shown(url: str) -> str:
    """``url`` as logs show it: without its query, fragment or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def forbidden_address(address: str) -> bool:
    """Whether a webhook may not reach ``address``: link-local (cloud metadata lives
    there), a cloud metadata address elsewhere (:data:`METADATA_ADDRESSES`), unspecified
    or multicast, IPv4 mapped into IPv6 included."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in METADATA_ADDRESSES or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def target_problem(url: str) -> str | None:
    """Why ``url`` may not be a webhook target, judged from the URL alone; ``None`` if it may."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host in METADATA_HOSTS or forbidden_address(host):
        return f"{shown(url)} names a link-local or cloud metadata address"
    return None


def payload(job: Job, event: str) -> dict[str, Any]:
    """What a notification says: the event and the job's public state, no personal data."""
    return {
        "id": str(uuid.uuid4()),
        "type": event,
        "at": iso(utcnow()),
        "job": {
            "id": job.id,
            "kind": job.kind.value,
            "status": job.status.value,
            "subject": job.subject,
            "due_at": iso(job.due_at),
            "error": job.error,
            "links": {"self": f"/v1/jobs/{job.id}"},
        },
    }


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300.0) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, sent within ``tolerance`` seconds."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def backoff(attempt: int, base: float = 2.0, cap: float = 600.0) -> float:
    """Seconds before attempt ``attempt + 1``: exponential with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


async def send(url: str, body: bytes, secret: str, *, allow_link_local: bool = False) -> None:
    """One delivery attempt of ``body`` to ``url``, signed with ``secret``, over a session
    of its own; :class:`DeliveryFailed` unless the receiver answers 2xx.

    The HTTP side (:mod:`jobs.webhook_sender`, aiohttp) is imported here, with the first
    delivery: a worker that delivers no webhook never loads it (about 10 MB).
    """
    from jobs.webhook_sender import Sender, session

    async with session(allow_link_local=allow_link_local) as http:
        await Sender(http, secret, allow_link_local=allow_link_local).send(url, body)


def encode(document: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return orjson.dumps(document)
