"""Settings: built once per process from a TOML file and ``HANDOVER_*`` variables.

The TOML file is named by ``HANDOVER_CONFIG``; a variable wins over the file.
Every value is checked at start: a bad one raises :class:`SettingsError` with one
line naming the setting and what is wrong, and the process stops there.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from connectors.registry import ConnectorConfig

ENV_PREFIX = "HANDOVER_"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names it."""


class Secret:
    """A string that never shows itself in ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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


def parse_size(value: object) -> int:
    """``"8MiB"``, ``"5MB"`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"expected a size such as 8MiB or 5000000, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _positive_int(value: object) -> int:
    number = int(str(value))
    if number < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return number


def _count(value: object) -> int:
    number = int(str(value))
    if number < 0:
        raise ValueError(f"expected a whole number of at least 0, got {value!r}")
    return number


def _text(value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"expected text, got {value!r}")
    return str(value)


def _optional_text(value: object) -> str | None:
    text = _text(value).strip()
    return text or None


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


def _redis_url(value: object) -> Secret | None:
    url = _url(value)
    if url is None:
        return None
    if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return Secret(url)


def _secret(value: object) -> Secret | None:
    text = _text(value)
    if not text:
        return None
    if len(text) < 32:
        raise ValueError("must be at least 32 characters")
    return Secret(text)


def _prefix(value: object) -> str:
    text = _text(value).strip("/")
    return f"{text}/" if text else ""


def _path(value: object) -> Path:
    return Path(_text(value)).expanduser()


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


_PARSERS: dict[str, Any] = {
    "redis_url": _redis_url,
    "s3_bucket": _optional_text,
    "s3_prefix": _prefix,
    "s3_endpoint_url": _url,
    "s3_public_endpoint_url": _url,
    "s3_sse": _optional_text,
    "s3_part_size": parse_size,
    "jwt_secret": _secret,
    "jwks_url": _jwks_url,
    "jwt_issuer": _optional_text,
    "jwt_audience": _optional_text,
    "jwt_leeway": parse_duration,
    "archive_ttl": parse_duration,
    "link_ttl": parse_duration,
    "deadline": parse_duration,
    "data_dir": _path,
    "signing_key_file": _optional_path,
    "worker_concurrency": _positive_int,
    "worker_poll_delay": parse_duration,
    "connector_timeout": parse_duration,
    "default_formats": _formats,
    "public_url": _url,
    "webhook_urls": _url_list,
    "webhook_secret": _secret,
    "max_downloads": _count,
    "rate_limit": _count,
    "subject_rate_limit": _count,
    "erasure_grace": parse_duration,
    "reauth_max_age": parse_duration,
    "identity_claims": _identity_claims,
}


def _redacted_url(secret: Secret | None) -> str | None:
    if secret is None:
        return None
    parts = urlsplit(secret.reveal())
    if parts.password is None:
        return secret.reveal()
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Settings:
    """Every knob Handover has, typed and checked. See README for each one's meaning."""

    redis_url: Secret | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "handover/"
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_sse: str | None = None
    s3_part_size: int = 8 * 2**20
    jwt_secret: Secret | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: timedelta = timedelta(seconds=30)
    archive_ttl: timedelta = timedelta(days=7)
    link_ttl: timedelta = timedelta(minutes=15)
    deadline: timedelta = timedelta(days=30)
    data_dir: Path = Path(".handover")
    signing_key_file: Path | None = None
    worker_concurrency: int = 50
    worker_poll_delay: timedelta = timedelta(milliseconds=50)
    connector_timeout: timedelta = timedelta(hours=1)
    default_formats: tuple[str, ...] = ("json",)
    public_url: str | None = None
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: Secret | None = None
    max_downloads: int = 0
    rate_limit: int = 120
    subject_rate_limit: int = 20
    erasure_grace: timedelta | None = None
    reauth_max_age: timedelta = timedelta(minutes=10)
    identity_claims: tuple[tuple[str, str], ...] = ()
    connectors: tuple[ConnectorConfig, ...] = field(default=(), repr=False)
    retention: tuple[RetentionConfig, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.s3_part_size < 5 * 2**20:
            raise SettingsError("HANDOVER_S3_PART_SIZE: S3 needs parts of at least 5MiB")
        if self.link_ttl <= timedelta(0):
            raise SettingsError("HANDOVER_LINK_TTL: must be longer than zero")
        if self.archive_ttl <= timedelta(0):
            raise SettingsError("HANDOVER_ARCHIVE_TTL: must be longer than zero")
        if self.jwt_leeway > timedelta(minutes=5):
            raise SettingsError("HANDOVER_JWT_LEEWAY: at most 5m of clock skew is allowed")
        if self.webhook_urls and self.webhook_secret is None:
            raise SettingsError(
                "HANDOVER_WEBHOOK_SECRET: required when HANDOVER_WEBHOOK_URLS is set"
            )

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = _redacted_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def grace(self) -> timedelta:
        """The wait between confirming an erasure and doing it: 24 h, none when embedded."""
        if self.erasure_grace is not None:
            return self.erasure_grace
        return timedelta(0) if self.embedded_redis else timedelta(hours=24)

    @property
    def embedded_redis(self) -> bool:
        """No Redis URL configured: run on the in-process store."""
        return self.redis_url is None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default: the process environment) and its config file."""
        environ = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        config_path = environ.get(f"{ENV_PREFIX}CONFIG")
        connector_tables: Mapping[str, Any] = {}
        retention_tables: Mapping[str, Any] = {}
        if config_path:
            document = _read_toml(Path(config_path))
            connector_tables = document.pop("connectors", {})
            retention_tables = document.pop("retention", {})
            for key, value in document.items():
                if key not in _PARSERS:
                    raise SettingsError(f"HANDOVER_CONFIG: {config_path}: unknown setting {key!r}")
                raw[key] = value
        for name in _PARSERS:
            env_name = f"{ENV_PREFIX}{name.upper()}"
            if env_name in environ:
                raw[name] = environ[env_name]
        values: dict[str, Any] = {}
        for name, value in raw.items():
            try:
                values[name] = _PARSERS[name](value)
            except (ValueError, TypeError) as exc:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None
        values["connectors"] = _connector_configs(connector_tables, config_path or "")
        values["retention"] = _retention_configs(retention_tables, config_path or "")
        return cls(**values)


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
