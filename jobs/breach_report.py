"""What the breach register hands out: the Art. 33(3) report to the supervisory authority,
signed, its readable HTML page, and the register itself as CSV.

The report is one JSON document carrying its own signature, as receipts do
(:mod:`jobs.archive.receipt`)::

    {"format": "handover-breach-report", ..., "signature": {"alg": "EdDSA", "kid": ..., ...}}

The signature covers the document without its ``signature`` field, serialised
canonically (keys sorted, no spaces); ``handover verify REPORT`` checks it with the
service's public keys. It is built from the register's latest version of the facts and
states only what was recorded: a number not yet known is ``null`` (the page says "not
yet known"), and the phases (Art. 33(4)) list every version with its note. The HTML
page is rendered from the signed document alone, so it says nothing the signature
does not cover.

The CSV has one row per version of each breach (its whole history), with the
breach's deadline and notification repeated on each row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jobs.archive.formats import csv_cell
from jobs.archive.receipt import canonical
from jobs.archive.signing import SignatureError, Signer, refuse_repeated_keys, verify
from jobs.model import iso

if TYPE_CHECKING:
    from jobs.breaches import Breach

FORMAT = "handover-breach-report"
FORMAT_VERSION = 1
TEMPLATES = Path(__file__).parent / "templates"
CSV_COLUMNS = (
    "breach",
    "version",
    "recorded_at",
    "recorded_by",
    "note",
    "aware_at",
    "occurred_at",
    "notify_authority_by",
    "nature",
    "subject_categories",
    "approx_subjects",
    "record_categories",
    "approx_records",
    "consequences",
    "measures",
    "dpo_contact",
    "clock",
    "notified_at",
    "authority",
    "reference",
    "late",
    "delay_reasons",
)


def build_report(breach: Breach, *, signer: Signer, issued_at: datetime) -> dict[str, Any]:
    """The signed Art. 33(3) report of ``breach`` as its facts stand now."""
    facts = breach.facts
    notification = breach.notification
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "breach": {"id": breach.id, "recorded_at": iso(breach.created_at)},
        "version": breach.versions[-1].number,
        "nature": {
            "description": facts.nature,
            "occurred_at": iso(facts.occurred_at),
            "subject_categories": list(facts.subject_categories),
            "approx_subjects": facts.approx_subjects,
            "record_categories": list(facts.record_categories),
            "approx_records": facts.approx_records,
        },
        "dpo_contact": facts.dpo_contact,
        "likely_consequences": facts.consequences,
        "measures": facts.measures,
        "timeline": {
            "aware_at": iso(breach.aware_at),
            "notify_authority_by": iso(breach.notify_authority_by),
            "clock": breach.clock(issued_at).value,
            "notification": None
            if notification is None
            else {
                "notified_at": iso(notification.notified_at),
                "authority": notification.authority,
                "reference": notification.reference,
                "late": notification.late,
                "delay_reasons": notification.delay_reasons,
            },
        },
        "phases": [
            {"version": v.number, "recorded_at": iso(v.recorded_at), "note": v.note}
            for v in breach.versions
        ],
        "issued_at": iso(issued_at),
    }
    document["signature"] = orjson.loads(signer.sign(canonical(document)))
    return document


def verify_report(data: bytes, keys: Iterable[Ed25519PublicKey]) -> tuple[str, dict[str, Any]]:
    """Check a report's signature; returns the signing key id and the report (unsigned part).

    JSON repeating a key in one object is refused, as for receipts.
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SignatureError(f"not a JSON breach report: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SignatureError(f"not a Handover breach report (format is not {FORMAT!r})")
    refuse_repeated_keys(data, "the breach report")
    signature = document.pop("signature", None)
    if not isinstance(signature, dict):
        raise SignatureError("the breach report carries no signature")
    kid = verify(canonical(document), orjson.dumps(signature), keys)
    return kid, document


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: dict[str, Any]) -> str:
    """The signed report as a page for the DPO to read and submit."""
    return _templates().get_template("breach_report.html").render(report=report)


def register_csv(breaches: Iterable[Breach], now: datetime) -> str:
    """The register as CSV: one row per version of each breach, oldest version first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for breach in breaches:
        notification = breach.notification
        for version in breach.versions:
            facts = version.facts
            writer.writerow(
                csv_cells(
                    breach.id,
                    version.number,
                    iso(version.recorded_at),
                    version.recorded_by,
                    version.note,
                    iso(facts.aware_at),
                    iso(facts.occurred_at),
                    iso(breach.notify_authority_by),
                    facts.nature,
                    "; ".join(facts.subject_categories),
                    facts.approx_subjects,
                    "; ".join(facts.record_categories),
                    facts.approx_records,
                    facts.consequences,
                    facts.measures,
                    facts.dpo_contact,
                    breach.clock(now).value,
                    iso(notification.notified_at) if notification else None,
                    notification.authority if notification else None,
                    notification.reference if notification else None,
                    ("yes" if notification.late else "no") if notification else None,
                    notification.delay_reasons if notification else None,
                )
            )
    return out.getvalue()


def csv_cells(*values: object) -> list[str]:
    """Cells as text, each neutralised by the archive's own rule (:func:`csv_cell`): one a
    spreadsheet would run as a formula gets a ``'`` in front."""
    return [csv_cell(value) for value in values]


__all__ = ["FORMAT", "build_report", "csv_cells", "register_csv", "render_html", "verify_report"]
