"""Webhooks: the platform is told when a request changes state, so it can tell people.

Each notification is a JSON POST to every configured URL, signed with
HMAC-SHA256 over ``"{timestamp}.{body}"`` in the header
``Handover-Signature: t=<unix seconds>,v1=<hex>`` (reject old timestamps to stop
replays), and delivered by a worker task retried with exponential backoff and
jitter. Event types::

    job.created  job.succeeded  job.failed  job.canceled
    job.expiring_soon   an export's archive expires within a day, not yet downloaded
    job.at_risk         a live request has under a quarter of its time left
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from jobs.model import Job, iso, utcnow

SIGNATURE_HEADER = "Handover-Signature"
DELIVER_TASK = "deliver_webhook"
MAX_TRIES = 10


class DeliveryFailed(Exception):
    """The receiver did not accept the notification this time."""


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


@dataclass(frozen=True)
class Sender:
    """Posts signed notifications over one HTTP session."""

    session: aiohttp.ClientSession
    secret: str
    timeout: float = 10.0

    async def send(self, url: str, body: bytes) -> None:
        """One delivery attempt; :class:`DeliveryFailed` unless the receiver answers 2xx."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            "User-Agent": "Handover-Webhooks/1",
        }
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryFailed(f"{url} answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"{url} unreachable: {type(exc).__name__}") from exc


def encode(document: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return orjson.dumps(document)
