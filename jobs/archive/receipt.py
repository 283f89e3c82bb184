"""Erasure and restriction receipts: what was done where, signed like an archive manifest.

A receipt is one JSON document carrying its own signature::

    {"format": "handover-receipt", ..., "signature": {"alg": "EdDSA", "kid": ..., "signature": ...}}

The signature covers the document without its ``signature`` field, serialised
canonically (keys sorted, no spaces). It holds no personal data beyond the
subject's id: counts, dataset names, legal bases, dates, and the kinds of
identifier used with how each was verified (never their values).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jobs.archive.signing import SignatureError, Signer, refuse_repeated_keys, verify
from jobs.model import Job, JobKind, iso, run_statement

FORMAT = "handover-receipt"
FORMAT_VERSION = 1


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes a receipt's signature covers."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def build_receipt(
    job: Job,
    *,
    connectors: Mapping[str, Mapping[str, Any]],
    signer: Signer,
    issued_at: datetime,
    handover_copies: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The signed receipt for a finished erasure or restriction job.

    Each processor's entry says whether it was asked; one that was not carries the
    recorded reason and no report or verification. ``handover_copies`` lists the
    subject's earlier exports whose archives and staged objects Handover deleted.
    """
    entries = []
    for name, run in job.connectors.items():
        described = connectors.get(name, {})
        entries.append(
            {
                "connector": name,
                "type": described.get("type"),
                "recipient": described.get("recipient"),
                **run_statement(run),
                "finished_at": iso(run.finished_at),
                **(run.report or {}),
            }
        )
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": job.kind.value,
        "job": {
            "id": job.id,
            "requested_at": iso(job.created_at),
            "confirmed_at": iso(job.erasure_options.confirmed_at),
            "dry_run": job.erasure_options.dry_run,
        },
        "subject": {"id": job.subject},
        "identity": job.identity.statement(),
        "issued_at": iso(issued_at),
        "connectors": entries,
    }
    if job.kind is JobKind.ERASURE:
        document["handover_copies"] = [dict(copy) for copy in handover_copies]
    document["signature"] = orjson.loads(signer.sign(canonical(document)))
    return document


def verify_receipt(data: bytes, keys: Iterable[Ed25519PublicKey]) -> tuple[str, dict[str, Any]]:
    """Check a receipt's signature; returns the signing key id and the receipt.

    A receipt whose JSON repeats a key in one object is refused, signed or not: the
    signature covers one reading of it, and another reader could take the other copy.
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SignatureError(f"not a JSON receipt: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SignatureError(f"not a Handover receipt (format is not {FORMAT!r})")
    refuse_repeated_keys(data, "the receipt")
    signature = document.pop("signature", None)
    if not isinstance(signature, dict):
        raise SignatureError("the receipt carries no signature")
    kid = verify(canonical(document), orjson.dumps(signature), keys)
    return kid, document


__all__ = ["FORMAT", "build_receipt", "canonical", "verify_receipt"]
