"""Settings: built once per process from a TOML file and ``HANDOVER_*`` variables.

The TOML file is named by ``HANDOVER_CONFIG``; a variable wins over the file.
Every value is checked at start: a bad one raises :class:`SettingsError` with one
line naming the setting and what is wrong, and the process stops there.

:class:`Settings` is a pydantic-settings model: each field's type names the parser of
its text. :meth:`Settings.load` is the only reader of the file and the variables.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic
from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connectors.registry import ConnectorConfig
from jobs import lifecycle
from jobs.lifecycle import Jurisdiction
from jobs.mail import mail_address, smtp_target
from jobs.queue import redis_settings
from jobs.webhooks import target_problem

ENV_PREFIX = "HANDOVER_"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it."""


class Secret(pydantic.Secret[str]):
    """A string that never shows itself in ``repr`` or ``str``; equal to a Secret of the same."""

    def reveal(self) -> str:
        """The secret value itself."""
        return self.get_secret_value()

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


_DURATION = re.compile(r"(\d+)\s*(ms|y|w|d|h|m|s)")
_DURATION_UNITS = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_SIZE = re.compile(r"(\d+)\s*(KiB|MiB|GiB|KB|MB|GB|B)?")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}
_SIZE_UNITS.update({"KiB": 2**10, "MiB": 2**20, "GiB": 2**30})


def parse_duration(value: object) -> timedelta:
    """``"10y"``, ``"7d"``, ``"1h30m"``, ``"900s"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 7d, 15m or 900s")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
                raise ValueError(f"expected a duration such as 7d, 15m or 900s, got {text!r}")
            seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return timedelta(seconds=seconds)


#: The shortest ``HANDOVER_RECORD_RETENTION``: what Handover keeps beside a job and lets
#: expire by itself (idempotency records, the sweeper's memory, webhook retries, notices'
#: state, arq's results) is gone before the job is purged (:mod:`jobs.records`).
MIN_RECORD_RETENTION = timedelta(days=30)


def _record_retention(value: object) -> timedelta:
    """A duration; ``off`` and its kin are refused: Handover's records are never kept forever."""
    if str(value).strip().lower() in {"off", "never", "none", "forever", "false"}:
        raise ValueError(
            "finished jobs cannot be kept forever (storage limitation, GDPR Art. 5(1)(e)); "
            "give the accountability period, e.g. 3y"
        )
    return parse_duration(value)


def parse_size(value: object) -> int:
    """``"8MiB"``, ``"5MB"`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"expected a size such as 8MiB or 5000000, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _at_least(least: int) -> Callable[[object], int]:
    """The parser of a whole number no smaller than ``least``."""

    def parse(value: object) -> int:
        number = int(str(value))
        if number < least:
            raise ValueError(f"expected a whole number of at least {least}, got {value!r}")
        return number

    return parse


def _text(value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"expected text, got {value!r}")
    return str(value)


def _url(value: object) -> str | None:
    text = _text(value).strip()
    if not text:
        return None
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"expected an absolute URL, got {text!r}")
    return text


def _url_list(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a list of URLs")
    urls = tuple(url for item in items if (url := _url(item)) is not None)
    bad = [url for url in urls if urlsplit(url).scheme not in {"http", "https"}]
    if bad:
        raise ValueError(f"expected http(s) URLs, got {bad[0]!r}")
    return urls


def _networks(value: object) -> tuple[IPv4Network | IPv6Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` (or a TOML list): addresses and networks, CIDR-checked."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a list of IP addresses or networks")
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ip_network(text))
        except ValueError as exc:
            if "host bits set" in str(exc):
                raise ValueError(f"{exc} (write the network's own address)") from None
            raise ValueError(f"{text!r} is not an IP address or network") from None
    return tuple(networks)


def _jwks_url(value: object) -> str | None:
    url = _url(value)
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" and not (
        parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1", "::1"}
    ):
        raise ValueError("expected an https:// URL (http:// only to localhost)")
    return url


def _time_zone(value: object) -> str:
    """An IANA time zone name the system knows (``Europe/Brussels``, ``UTC``)."""
    text = _text(value).strip()
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {text!r}; expected an IANA name such as Europe/Brussels or UTC"
        ) from None
    return text


def _jurisdiction_name(value: object) -> str:
    text = _text(value).strip().lower()
    if not lifecycle.NAME.fullmatch(text):
        raise ValueError(f"expected a jurisdiction's name such as gdpr, got {value!r}")
    return text


def _rectification_approval(value: object) -> str:
    text = _text(value).strip().lower()
    if text not in ("identity", "all", "none"):
        raise ValueError(f"expected identity, all or none, got {value!r}")
    return text


def _redis_url(value: object) -> str | None:
    """A Redis URL that ``jobs.queue.connect`` can open: one server, or Sentinels."""
    url = _url(value)
    if url is None:
        return None
    redis_settings(url)  # raises ValueError saying what is malformed
    return url


def _smtp_url(value: object) -> str | None:
    """An ``smtp://`` or ``smtps://`` URL :mod:`jobs.mail` can use."""
    url = _url(value)
    if url is None:
        return None
    smtp_target(url)  # raises ValueError saying what is malformed
    return url


def _mail_from(value: object) -> str | None:
    """``privacy@example.com`` or ``Example privacy team <privacy@example.com>``."""
    text = _text(value).strip()
    if not text:
        return None
    mail_address(text)  # raises ValueError saying what is wrong
    return text


def _secret(value: object) -> str | None:
    text = _text(value)
    if not text:
        return None
    if len(text) < 32:
        raise ValueError("must be at least 32 characters")
    return text


def _prefix(value: object) -> str:
    text = _text(value).strip("/")
    return f"{text}/" if text else ""


def _path(value: object) -> Path:
    return Path(_text(value)).expanduser()


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/handover``, else ``~/.local/share/handover``: one place per user.

    Absolute, so every command (``handover serve``, ``handover token``) finds the same
    data dir whatever its current directory.
    """
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "handover"


def _optional_path(value: object) -> Path | None:
    text = _text(value)
    return Path(text).expanduser() if text else None


def _formats(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a list of formats")
    formats = tuple(str(item).strip() for item in items if str(item).strip())
    unknown = set(formats) - {"json", "csv", "ndjson"}
    if unknown or not formats:
        raise ValueError("expected one or more of json, csv, ndjson")
    return formats


_CLAIM_OR_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def _identity_claims(value: object) -> tuple[tuple[str, str], ...]:
    """``"crm_id:hubspot_contact_id,…"`` (or a TOML table): claims vouching for identifiers."""
    if isinstance(value, Mapping):
        pairs = [(str(claim), str(name)) for claim, name in value.items()]
    elif isinstance(value, str):
        pairs = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            claim, colon, name = item.partition(":")
            if not colon:
                raise ValueError(f"expected claim:identifier, got {item!r}")
            pairs.append((claim.strip(), name.strip()))
    else:
        raise ValueError("expected claim:identifier pairs, comma-separated")
    for claim, name in pairs:
        if not _CLAIM_OR_IDENTIFIER.fullmatch(claim) or not _CLAIM_OR_IDENTIFIER.fullmatch(name):
            raise ValueError(f"{claim}:{name} is not a claim name and an identifier name")
        if name == "id" or claim in {"sub", "email", "phone_number"}:
            raise ValueError(f"{claim}:{name}: sub, email and phone_number are built in")
    return tuple(pairs)


def _parsed(parse: Callable[[Any], object], *ready: type) -> BeforeValidator:
    """Parse a variable's text or a TOML value; None and ``ready`` values (from code) pass."""
    return BeforeValidator(
        lambda value: value if isinstance(value, (type(None), *ready)) else parse(value)
    )


_Duration = Annotated[timedelta, _parsed(parse_duration, timedelta)]
_Count = Annotated[int, _parsed(_at_least(0))]
_Text = Annotated[str | None, _parsed(lambda value: _text(value).strip() or None)]
_Url = Annotated[str | None, _parsed(_url)]
_SecretText = Annotated[Secret | None, _parsed(_secret, Secret)]


def _redacted_url(secret: Secret | None) -> str | None:
    if secret is None:
        return None
    parts = urlsplit(secret.reveal())
    if parts.password is None:
        return secret.reveal()
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class RetentionConfig:
    """A legal duty to keep data of a dataset (``connector/dataset``, ``dataset``) or category."""

    name: str
    legal_basis: str
    duration: timedelta
    dataset: str | None = None
    category: str | None = None

    def applies_to(self, connector: str, dataset: str, category: str) -> bool:
        """Whether this rule covers ``connector``'s ``dataset`` of ``category``."""
        if self.dataset is not None:
            return self.dataset in {dataset, f"{connector}/{dataset}"}
        return self.category == category


@dataclass(frozen=True)
class RecipientConfig:
    """A recipient of the subject's data that is not a connector (``[recipients.NAME]``):
    told by email of a rectification, erasure or restriction (GDPR Art. 19) by
    :mod:`jobs.recipients`. ``identifiers`` names what it knows subjects by: only those
    are sent."""

    name: str
    contact: str
    description: str | None = None
    identifiers: tuple[str, ...] = ("email",)


class Settings(BaseSettings):
    """Every knob Handover has, typed and checked. See README for each one's meaning."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=True)

    redis_url: Annotated[Secret | None, _parsed(_redis_url, Secret)] = None
    s3_bucket: _Text = None
    s3_prefix: Annotated[str, _parsed(_prefix)] = "handover/"
    s3_endpoint_url: _Url = None
    s3_public_endpoint_url: _Url = None
    s3_sse: _Text = None
    s3_part_size: Annotated[int, _parsed(parse_size)] = 5 * 2**20
    s3_server_side_copy: bool = True
    jwt_secret: _SecretText = None
    jwks_url: Annotated[str | None, _parsed(_jwks_url)] = None
    jwt_issuer: _Text = None
    jwt_audience: _Text = None
    jwt_leeway: _Duration = timedelta(seconds=30)
    archive_ttl: _Duration = timedelta(days=7)
    link_ttl: _Duration = timedelta(minutes=15)
    jurisdiction: Annotated[str, _parsed(_jurisdiction_name)] = "gdpr"
    jurisdiction_claim: _Text = "jurisdiction"
    time_zone: Annotated[str, _parsed(_time_zone)] = "UTC"
    complaint_authority: _Text = (
        "Autorité de protection des données / Gegevensbeschermingsautoriteit (Belgium)"
    )
    complaint_url: _Url = "https://www.dataprotectionauthority.be"
    data_dir: Annotated[Path, _parsed(_path, Path)] = Field(default_factory=default_data_dir)
    signing_key_file: Annotated[Path | None, _parsed(_optional_path, Path)] = None
    worker_concurrency: Annotated[int, _parsed(_at_least(1))] = 50
    worker_poll_delay: _Duration = timedelta(milliseconds=50)
    connector_timeout: _Duration = timedelta(hours=1)
    reconcile_min_age: _Duration = timedelta(hours=1)
    stall_timeout: _Duration = timedelta(minutes=15)
    record_retention: Annotated[timedelta, _parsed(_record_retention, timedelta)] = timedelta(
        days=3 * 365
    )
    default_formats: Annotated[tuple[str, ...], _parsed(_formats)] = ("json",)
    public_url: _Url = None
    webhook_urls: Annotated[tuple[str, ...], _parsed(_url_list)] = ()
    webhook_secret: _SecretText = None
    webhook_allow_link_local: bool = False
    max_downloads: _Count = 0
    rate_limit: _Count = 120
    subject_rate_limit: _Count = 20
    erasure_grace: Annotated[timedelta | None, _parsed(parse_duration, timedelta)] = None
    reauth_max_age: _Duration = timedelta(minutes=10)
    rectification_approval: Annotated[str, _parsed(_rectification_approval)] = "identity"
    identity_claims: Annotated[tuple[tuple[str, str], ...], _parsed(_identity_claims, tuple)] = ()
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], _parsed(_networks)] = ()
    smtp_url: Annotated[Secret | None, _parsed(_smtp_url, Secret)] = None
    mail_from: Annotated[str | None, _parsed(_mail_from)] = None
    privacy_url: _Url = None
    support_email: Annotated[str | None, _parsed(_mail_from)] = None
    reply_link_ttl: _Duration = timedelta(days=30)
    reply_max_bytes: Annotated[int, _parsed(parse_size)] = 100 * 2**20
    controller: _Text = None
    controller_contact: _Text = None
    dpo_contact: _Text = None
    automated_decisions: _Text = None
    oidc_issuer: Annotated[str | None, _parsed(_jwks_url)] = None
    oidc_client_id: _Text = None
    oidc_client_secret: Annotated[
        Secret | None, _parsed(lambda value: _text(value).strip() or None, Secret)
    ] = None
    connectors: tuple[ConnectorConfig, ...] = Field(default=(), repr=False)
    retention: tuple[RetentionConfig, ...] = Field(default=(), repr=False)
    recipients: tuple[RecipientConfig, ...] = Field(default=(), repr=False)
    jurisdictions: tuple[Jurisdiction, ...] = Field(default=lifecycle.BUILT_IN, repr=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The keyword arguments alone: :meth:`load` reads the environ it is given, and the file."""
        return (init_settings,)

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(
        cls, values: Any, handler: pydantic.ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        try:
            return handler(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            problem = error["ctx"]["error"] if error["type"] == "value_error" else error["msg"]
            raise SettingsError(f"{ENV_PREFIX}{str(error['loc'][0]).upper()}: {problem}") from None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.reply_link_ttl <= timedelta(0) or self.reply_max_bytes <= 0:
            raise SettingsError(
                "HANDOVER_REPLY_LINK_TTL and HANDOVER_REPLY_MAX_BYTES: must be above zero"
            )
        if not 5 * 2**20 <= self.s3_part_size <= 5 * 2**30:
            raise SettingsError("HANDOVER_S3_PART_SIZE: S3 needs parts of 5MiB to 5GiB")
        if self.link_ttl <= timedelta(0):
            raise SettingsError("HANDOVER_LINK_TTL: must be longer than zero")
        if self.archive_ttl <= timedelta(0):
            raise SettingsError("HANDOVER_ARCHIVE_TTL: must be longer than zero")
        if self.record_retention < MIN_RECORD_RETENTION:
            raise SettingsError(
                "HANDOVER_RECORD_RETENTION: must be at least 30d: a finished job is the "
                "evidence that a request was answered (GDPR Art. 5(2)); 3y is the default"
            )
        if self.jurisdiction not in {profile.name for profile in self.jurisdictions}:
            known = ", ".join(profile.name for profile in self.jurisdictions)
            raise SettingsError(
                f"HANDOVER_JURISDICTION: unknown jurisdiction {self.jurisdiction!r}; known: {known}"
            )
        for profile in self.jurisdictions:
            if profile.authority is None and self.complaint_authority is None:
                raise SettingsError(
                    f"HANDOVER_COMPLAINT_AUTHORITY: needed: {profile.name} names no authority, "
                    "and a refused subject must be told where to complain (GDPR Art. 12(4))"
                )
            if profile.authority_url is None and self.complaint_url is None:
                raise SettingsError(
                    f"HANDOVER_COMPLAINT_URL: needed: {profile.name} names no authority's URL, "
                    "and a refused subject must be told where to complain (GDPR Art. 12(4))"
                )
        if self.jwt_leeway > timedelta(minutes=5):
            raise SettingsError("HANDOVER_JWT_LEEWAY: at most 5m of clock skew is allowed")
        if self.webhook_urls and self.webhook_secret is None:
            raise SettingsError(
                "HANDOVER_WEBHOOK_SECRET: required when HANDOVER_WEBHOOK_URLS is set"
            )
        if self.smtp_url is not None and self.mail_from is None:
            raise SettingsError("HANDOVER_MAIL_FROM: required when HANDOVER_SMTP_URL is set")
        if self.smtp_url is not None and self.privacy_url is None and self.public_url is None:
            raise SettingsError(
                "HANDOVER_PRIVACY_URL: required when HANDOVER_SMTP_URL is set (or "
                "HANDOVER_PUBLIC_URL): notices link subjects to where they sign in"
            )
        both = sorted({c.name for c in self.connectors} & {r.name for r in self.recipients})
        if both:
            raise SettingsError(
                f"HANDOVER_CONFIG: [recipients.{both[0]}] is also a connector, which its jobs "
                "tell themselves: name only recipients that are not connectors"
            )
        emailed = sorted(c.name for c in self.connectors if c.type == "email")
        if emailed and self.smtp_url is not None and self.public_url is None:
            raise SettingsError(
                f"HANDOVER_PUBLIC_URL: required with an email connector ({', '.join(emailed)}): "
                "the reply link in its requests must reach the processor"
            )
        if self.oidc_issuer is not None and self.oidc_client_id is None:
            raise SettingsError(
                "HANDOVER_OIDC_CLIENT_ID: required when HANDOVER_OIDC_ISSUER is set"
            )
        for url in () if self.webhook_allow_link_local else self.webhook_urls:
            problem = target_problem(url)
            if problem is not None:
                raise SettingsError(
                    f"HANDOVER_WEBHOOK_URLS: {problem}; refused unless "
                    "HANDOVER_WEBHOOK_ALLOW_LINK_LOCAL=true"
                )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, _redacted_url(value) if name in {"redis_url", "smtp_url"} else value

    def __str__(self) -> str:
        return repr(self)

    @property
    def grace(self) -> timedelta:
        """The wait between confirming an erasure and doing it: 24 h, none when embedded."""
        if self.erasure_grace is not None:
            return self.erasure_grace
        return timedelta(0) if self.embedded_redis else timedelta(hours=24)

    @property
    def zone(self) -> ZoneInfo:
        """The controller's time zone, in which deadlines end (``HANDOVER_TIME_ZONE``)."""
        return ZoneInfo(self.time_zone)

    def profile(self, name: str | None = None) -> Jurisdiction:
        """The jurisdiction ``name`` (default ``HANDOVER_JURISDICTION``); InvalidRequest if none."""
        return lifecycle.find(self.jurisdictions, name or self.jurisdiction)

    @property
    def embedded_redis(self) -> bool:
        """No Redis URL configured: run on the embedded store (:mod:`jobs.embedded`)."""
        return self.redis_url is None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default: the process environment) and its config file."""
        environ = os.environ if environ is None else environ
        path = environ.get(f"{ENV_PREFIX}CONFIG") or ""
        document = _read_toml(Path(path)) if path else {}
        connectors, retention = document.pop("connectors", {}), document.pop("retention", {})
        jurisdictions = document.pop("jurisdictions", {})
        recipients = document.pop("recipients", {})
        unknown = [key for key in document if key not in VARIABLES.values()]
        if unknown:
            raise SettingsError(f"HANDOVER_CONFIG: {path}: unknown setting {unknown[0]!r}")
        document.update((name, environ[var]) for var, name in VARIABLES.items() if var in environ)
        return cls(
            **document,
            connectors=_connector_configs(connectors, path),
            retention=_retention_configs(retention, path),
            recipients=_recipient_configs(recipients, path),
            jurisdictions=_jurisdictions(jurisdictions, path),
        )


#: Each setting's ``HANDOVER_*`` variable and its field; the README's table lists them all.
VARIABLES = {
    f"{ENV_PREFIX}{name.upper()}": name
    for name in Settings.model_fields
    if name not in {"connectors", "retention", "recipients", "jurisdictions"}  # file tables only
}


def _jurisdictions(tables: object, path: str) -> tuple[Jurisdiction, ...]:
    if not isinstance(tables, dict):
        raise SettingsError(f"HANDOVER_CONFIG: {path}: [jurisdictions] must be a table of tables")
    try:
        return lifecycle.configured(tables)
    except ValueError as exc:
        raise SettingsError(f"HANDOVER_CONFIG: {path}: {exc}") from None


def _retention_configs(tables: object, path: str) -> tuple[RetentionConfig, ...]:
    source = f"HANDOVER_CONFIG: {path}"
    if not isinstance(tables, dict):
        raise SettingsError(f"{source}: [retention] must be a table of tables")
    rules = []
    for name, table in tables.items():
        where = f"{source}: [retention.{name}]"
        if not isinstance(table, dict):
            raise SettingsError(f"{where} must be a table")
        unknown = set(table) - {"dataset", "category", "legal_basis", "duration"}
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if ("dataset" in table) == ("category" in table):
            raise SettingsError(f"{where} needs exactly one of dataset or category")
        basis = table.get("legal_basis")
        if not isinstance(basis, str) or not basis.strip():
            raise SettingsError(f"{where} needs a legal_basis")
        try:
            duration = parse_duration(table.get("duration", ""))
        except ValueError as exc:
            raise SettingsError(f"{where}: duration: {exc}") from None
        if duration <= timedelta(0):
            raise SettingsError(f"{where}: duration must be longer than zero")
        rules.append(
            RetentionConfig(
                name=name,
                legal_basis=basis.strip(),
                duration=duration,
                dataset=table.get("dataset"),
                category=table.get("category"),
            )
        )
    return tuple(rules)


def _recipient_configs(tables: object, path: str) -> tuple[RecipientConfig, ...]:
    source = f"HANDOVER_CONFIG: {path}"
    if not isinstance(tables, dict):
        raise SettingsError(f"{source}: [recipients] must be a table of tables")
    recipients = []
    for name, table in tables.items():
        where = f"{source}: [recipients.{name}]"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
            raise SettingsError(f"{where}: the name must be lowercase letters, digits, - or _")
        if not isinstance(table, dict):
            raise SettingsError(f"{where} must be a table")
        unknown = set(table) - {"contact", "description", "identifiers"}
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        contact, description = table.get("contact"), table.get("description")
        try:
            address = mail_address(contact) if isinstance(contact, str) else None
        except ValueError as exc:
            raise SettingsError(f"{where}: contact: {exc}") from None
        if address is None:
            raise SettingsError(f'{where} needs a contact = "privacy@recipient.example"')
        if description is not None and (not isinstance(description, str) or not description):
            raise SettingsError(f"{where}: description must be text")
        identifiers = table.get("identifiers", ["email"])
        if (
            not isinstance(identifiers, list)
            or not identifiers
            or not all(isinstance(i, str) and i for i in identifiers)
        ):
            raise SettingsError(f'{where}: identifiers must be a list of names, e.g. ["email"]')
        recipients.append(RecipientConfig(name, address, description, tuple(identifiers)))
    return tuple(recipients)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"HANDOVER_CONFIG: no such file {str(path)!r}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"HANDOVER_CONFIG: {path} is not valid TOML: {exc}") from None


def _connector_configs(tables: object, path: str) -> tuple[ConnectorConfig, ...]:
    source = f"HANDOVER_CONFIG: {path}"
    if not isinstance(tables, dict):
        raise SettingsError(f"{source}: [connectors] must be a table of tables")
    configs = []
    for name, table in tables.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
            raise SettingsError(
                f"{source}: connector name {name!r} must be lowercase letters, digits, - or _"
            )
        if not isinstance(table, dict) or not isinstance(table.get("type"), str):
            raise SettingsError(f'{source}: [connectors.{name}] needs a type = "..."')
        options = {k: v for k, v in table.items() if k != "type"}
        configs.append(ConnectorConfig(name=name, type=table["type"], options=options))
    return tuple(configs)
