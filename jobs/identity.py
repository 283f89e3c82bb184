"""Identity: knowing the subject at every processor before any processor is asked.

A job's identifiers come from three places, each recorded with how it was obtained
(:class:`~jobs.model.Identity` keeps the evidence):

- the verified token of a subject asking for themselves: ``email`` when
  ``email_verified`` is true, ``phone_number`` when ``phone_number_verified`` is
  true, and the claims ``HANDOVER_IDENTITY_CLAIMS`` maps to identifier names;
- support staff filing a request for someone, or adding identifiers to a job that
  needs attention, each time saying how identity was checked (``verified_by``);
- *identity sources*: connectors that declare ``provides`` and look identifiers up
  (the platform's users table gives the email; a CRM lookup a contact id). Sources
  run first, in dependency order (:func:`plan_sources`), each once it can be given
  one of the identifiers it needs.

A connector none of whose ``identifiers`` is known after that is not run: its run
ends ``unidentified`` and the job waits in ``needs_attention`` (GDPR Art. 12(6):
the controller may ask for what it needs to identify the subject; it may not
pretend to have asked). Values are personal data: they stay on the live job only,
never in logs, events, webhooks, manifests or receipts, which name only the kinds.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from graphlib import CycleError, TopologicalSorter
from typing import Any

from connectors.base import Connector
from connectors.errors import ConnectorError, TransientError, Unidentified
from connectors.items import Subject
from jobs.model import InvalidRequest

log = logging.getLogger("handover.identity")

#: Identifiers every deployment knows: the platform user id and the OpenID Connect claims.
STANDARD_IDENTIFIERS = frozenset({"id", "email", "phone_number"})
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_IDENTIFIER_LENGTH = 320


class IdentityConfigError(ValueError):
    """Connectors' identifiers cannot be resolved as configured (a cycle, an unknown name)."""


def check_identifier_name(name: str, field_name: str = "identities") -> str:
    """``name`` if it can name an identifier; :class:`InvalidRequest` otherwise."""
    if not _NAME.fullmatch(name) or name == "id":
        raise InvalidRequest(
            field_name,
            f"{name!r} cannot name an identifier (a letter, then letters, digits, _ . -; "
            "not 'id', which is the subject itself)",
        )
    return name


def check_identifier_value(value: str, field_name: str) -> str:
    """``value`` if it is safe to hand a processor: not a path's dot segment, no controls."""
    if not value or len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidRequest(field_name, f"must be 1 to {MAX_IDENTIFIER_LENGTH} characters")
    if value.strip(".") == "" or value != value.strip():
        raise InvalidRequest(field_name, "must not be only dots or start or end with spaces")
    if _CONTROL.search(value):
        raise InvalidRequest(field_name, "must not contain control characters")
    return value


def checked_identifiers(identifiers: Mapping[str, str]) -> dict[str, str]:
    """Identifiers given by a person, each name and value checked."""
    return {
        check_identifier_name(name): check_identifier_value(value, f"identities.{name}")
        for name, value in identifiers.items()
    }


def plan_sources(
    connectors: Mapping[str, Connector], claimed: Iterable[str] = ()
) -> tuple[Connector, ...]:
    """The identity sources in the order they can run; refuses configurations that cannot work.

    Known identifiers are the standard ones, those ``claimed`` from tokens and those
    some source provides. A connector that needs none of them could never be asked,
    and sources that need each other's identifiers form a cycle: both are errors
    at start, naming the connector.
    """
    sources = {name: c for name, c in connectors.items() if c.provides}
    known = set(STANDARD_IDENTIFIERS) | set(claimed)
    for source in sources.values():
        known |= source.provides
    for name, connector in connectors.items():
        if not connector.identifiers:
            raise IdentityConfigError(f"connector {name!r} declares no identifiers")
        if not connector.identifiers & known:
            raise IdentityConfigError(
                f"connector {name!r} needs {' or '.join(sorted(connector.identifiers))}, "
                "which no token claim and no identity source provides"
            )
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name, source in sources.items():
        sorter.add(name)
        for other, provider in sources.items():
            if other != name and source.identifiers & provider.provides:
                sorter.add(name, other)
    try:
        order = list(sorter.static_order())
    except CycleError as exc:
        cycle = " -> ".join(str(n) for n in exc.args[1])
        raise IdentityConfigError(
            f"identity sources depend on each other in a cycle: {cycle}"
        ) from None
    return tuple(sources[name] for name in order)


def identified(connector: Connector, subject: Subject) -> bool:
    """Whether one of the identifiers ``connector`` needs is known for ``subject``."""
    return any(subject.identifier(name) for name in connector.identifiers)


@dataclass
class Resolution:
    """What the identity sources found, and what each said (no values in ``evidence``)."""

    found: dict[str, str] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


async def resolve_identity(
    sources: Iterable[Connector],
    subject: Subject,
    *,
    time_limit: timedelta,
    tolerate_transient: bool,
) -> Resolution:
    """Run each source that can be given an identifier, feeding later ones what earlier found.

    A source's permanent failure (or, with ``tolerate_transient``, a transient one)
    is recorded and the others go on: connectors that then lack identifiers end
    ``unidentified``, never "nothing held". Without ``tolerate_transient`` a
    transient failure is raised, for the caller to retry the whole step.
    """
    resolution = Resolution()
    current = subject
    for source in sources:
        if not identified(source, current):
            resolution.failures.append(
                {
                    "source": source.name,
                    "error": f"needs {' or '.join(sorted(source.identifiers))}; none is known",
                }
            )
            continue
        try:
            async with asyncio.timeout(time_limit.total_seconds()):
                answer = await source.resolve(current)
        except Unidentified as exc:
            resolution.failures.append({"source": source.name, "error": str(exc)})
            continue
        except TransientError as exc:
            if not tolerate_transient:
                raise
            resolution.failures.append({"source": source.name, "error": _bounded(exc)})
            continue
        except (ConnectorError, TimeoutError) as exc:
            resolution.failures.append({"source": source.name, "error": _bounded(exc)})
            continue
        except Exception as exc:
            log.error("identity source %s failed unexpectedly", source.name, exc_info=exc)
            resolution.failures.append({"source": source.name, "error": "internal error"})
            continue
        fresh: dict[str, str] = {}
        for name, value in answer.items():
            if name not in source.provides or current.identifier(name) or name in fresh:
                continue
            try:
                fresh[name] = check_identifier_value(str(value), name)
            except InvalidRequest:
                resolution.failures.append(
                    {"source": source.name, "error": f"answered an unusable {name}"}
                )
        if not fresh:
            continue
        used = sorted(n for n in source.identifiers if current.identifier(n))
        resolution.found.update(fresh)
        resolution.evidence.append(
            {
                "identifiers": sorted(fresh),
                "source": f"connector {source.name}",
                "verified_by": f"looked up at {source.name} by {', '.join(used)}",
            }
        )
        identities = {**current.identities, **{k: v for k, v in fresh.items() if k != "email"}}
        current = Subject(current.id, current.email or fresh.get("email"), identities)
    return resolution


def _bounded(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def claim_identifiers(claims: Mapping[str, Any], mapped: Mapping[str, str]) -> dict[str, str]:
    """The identifiers a verified token vouches for (OpenID Connect Core §5.1).

    ``email`` only with ``email_verified: true``, ``phone_number`` only with
    ``phone_number_verified: true``; ``mapped`` names further claims (claim →
    identifier) the identity provider vouches for. Values of the wrong shape are
    ignored, never half-used.
    """
    found: dict[str, str] = {}
    for claim, verified_flag in (
        ("email", "email_verified"),
        ("phone_number", "phone_number_verified"),
    ):
        value = claims.get(claim)
        if claims.get(verified_flag) is True and isinstance(value, str):
            found[claim] = value
    for claim, name in mapped.items():
        value = claims.get(claim)
        if isinstance(value, str | int) and not isinstance(value, bool):
            found[name] = str(value)
    safe: dict[str, str] = {}
    for name, value in found.items():
        try:
            safe[name] = check_identifier_value(value, name)
        except InvalidRequest:
            continue
    return safe
