"""Erasure, restriction, objection and rectification receipts: what was done where, signed
like an archive manifest.

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
from jobs.model import (
    Job,
    JobKind,
    LiftOptions,
    ObjectionOptions,
    RectificationOptions,
    iso,
    run_statement,
)

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
    told: Mapping[str, Any] | None = None,
    recipients: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The signed receipt for a finished erasure, restriction, objection or rectification job.

    A rectification's names the fields changed at each processor and how many records,
    never a value, old or new. A lift's names the restriction it ends, its ground, and
    ``told``: when and by which message the subject was told (Art. 18(3)).

    Each processor's entry says whether it was asked; one that was not carries the
    recorded reason and no report or verification. ``handover_copies`` lists the
    subject's earlier exports whose archives and staged objects Handover deleted.
    ``recipients``, where given, lists the recipients that are not connectors and how
    each stands: told (with the message's id), not told (with why), or still queued
    (:mod:`jobs.recipients`; :func:`reissue_receipt` signs it again once all are settled).
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
        "job": _job_statement(job, told),
        "subject": {"id": job.subject},
        "identity": job.identity.statement(),
        "issued_at": iso(issued_at),
        "connectors": entries,
    }
    if job.kind is JobKind.ERASURE:
        document["handover_copies"] = [dict(copy) for copy in handover_copies]
    if recipients is not None:
        document["recipients"] = [dict(entry) for entry in recipients]
    document["signature"] = orjson.loads(signer.sign(canonical(document)))
    return document


def _job_statement(job: Job, told: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the receipt says of the request: when, and what was asked and decided."""
    statement: dict[str, Any] = {"id": job.id, "requested_at": iso(job.created_at)}
    if isinstance(job.options, LiftOptions):
        statement["restriction"] = job.options.restriction
        statement["ground"] = job.options.ground
        statement["lifts_at"] = iso(job.options.lifts_at)
        statement["told"] = dict(told or {})
        return statement
    if isinstance(job.options, RectificationOptions):
        decision = job.options.decision
        statement["fields"] = [
            {"connector": ref.connector, "dataset": ref.dataset, "field": ref.field}
            for ref in job.options.changes
        ]
        statement["approval_needed"] = job.options.approval_needed
        statement["decision"] = (
            None
            if decision is None
            else {
                "upheld": decision.upheld,
                "grounds": decision.grounds,
                "verified_by": decision.verified_by,
                "at": iso(decision.at),
            }
        )
        return statement
    if isinstance(job.options, ObjectionOptions):
        decision = job.options.decision
        statement["purposes"] = list(job.options.purposes)
        statement["decision"] = (
            None
            if decision is None
            else {"upheld": decision.upheld, "grounds": decision.grounds, "at": iso(decision.at)}
        )
        return statement
    statement["confirmed_at"] = iso(job.erasure_options.confirmed_at)
    statement["dry_run"] = job.erasure_options.dry_run
    if job.kind is JobKind.RESTRICTION:
        statement["ground"] = job.erasure_options.ground
        statement["until"] = iso(job.erasure_options.until)
    return statement


def reissue_receipt(
    receipt: Mapping[str, Any],
    *,
    recipients: Sequence[Mapping[str, Any]],
    signer: Signer,
    issued_at: datetime,
) -> dict[str, Any]:
    """``receipt`` again with ``recipients`` as they stand now, issued at ``issued_at`` and
    signed anew; everything else as first signed (``first_issued_at`` says when)."""
    document = {key: value for key, value in receipt.items() if key != "signature"}
    document.setdefault("first_issued_at", receipt["issued_at"])
    document["issued_at"] = iso(issued_at)
    document["recipients"] = [dict(entry) for entry in recipients]
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


__all__ = ["FORMAT", "build_receipt", "canonical", "reissue_receipt", "verify_receipt"]
