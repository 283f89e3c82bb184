"""Settings: defaults, a TOML file, ``HANDOVER_*`` variables, and clear errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from connectors.registry import ConnectorConfig
from jobs.settings import (
    VARIABLES,
    Secret,
    Settings,
    SettingsError,
    default_data_dir,
    parse_duration,
    parse_size,
)

JWT_SECRET = "a-very-long-jwt-signing-secret-of-40-chars"
REDIS_PASSWORD = "s3cr3t-redis-pass"


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    """Writes a TOML config and returns an environ mapping naming it."""

    def write(text: str) -> dict[str, str]:
        path = tmp_path / "handover.toml"
        path.write_text(text)
        return {"HANDOVER_CONFIG": str(path)}

    return write


def test_defaults_without_configuration() -> None:
    settings = Settings.load({})

    assert settings == Settings()
    assert settings.redis_url is None
    assert settings.s3_bucket is None
    assert settings.s3_prefix == "handover/"
    assert settings.s3_part_size == 5 * 2**20
    assert settings.s3_server_side_copy
    assert settings.jwt_secret is None
    assert settings.archive_ttl == timedelta(days=7)
    assert settings.link_ttl == timedelta(minutes=15)
    assert settings.jurisdiction == "gdpr" and settings.time_zone == "UTC"
    assert settings.data_dir == default_data_dir() and settings.data_dir.is_absolute()
    assert settings.worker_concurrency == 50
    assert settings.worker_poll_delay == timedelta(milliseconds=50)
    assert settings.connector_timeout == timedelta(hours=1)
    assert settings.default_formats == ("json",)
    assert settings.connectors == ()
    assert settings.embedded_redis
    assert settings.s3_bucket is None


def test_environment_values_are_parsed() -> None:
    settings = Settings.load(
        {
            "HANDOVER_REDIS_URL": "redis://127.0.0.1:6379/2",
            "HANDOVER_S3_BUCKET": "exports",
            "HANDOVER_S3_PREFIX": "/tenant-a/",
            "HANDOVER_S3_PART_SIZE": "16MiB",
            "HANDOVER_JWT_SECRET": JWT_SECRET,
            "HANDOVER_WORKER_CONCURRENCY": "3",
            "HANDOVER_DEFAULT_FORMATS": "json, csv,ndjson",
            "HANDOVER_DATA_DIR": "/var/lib/handover",
            "UNRELATED": "ignored",
        }
    )

    assert settings.redis_url == Secret("redis://127.0.0.1:6379/2")
    assert settings.s3_bucket == "exports"
    assert settings.s3_prefix == "tenant-a/"
    assert settings.s3_part_size == 16 * 2**20
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.reveal() == JWT_SECRET
    assert settings.worker_concurrency == 3
    assert settings.default_formats == ("json", "csv", "ndjson")
    assert settings.data_dir == Path("/var/lib/handover")
    assert not settings.embedded_redis
    assert settings.s3_bucket is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("false", False), ("0", False), ("off", False), ("true", True), ("1", True), ("on", True)],
)
def test_server_side_copy_parses_like_the_other_switches(value: str, expected: bool) -> None:
    settings = Settings.load({"HANDOVER_S3_SERVER_SIDE_COPY": value})

    assert settings.s3_server_side_copy is expected


def test_server_side_copy_from_the_file(config_file: Callable[[str], dict[str, str]]) -> None:
    assert not Settings.load(config_file("s3_server_side_copy = false\n")).s3_server_side_copy
    with pytest.raises(SettingsError) as raised:
        Settings.load(config_file('s3_server_side_copy = "sometimes"\n'))

    assert str(raised.value).startswith("HANDOVER_S3_SERVER_SIDE_COPY: ")
    assert "\n" not in str(raised.value)


def test_environment_wins_over_the_file(config_file: Callable[[str], dict[str, str]]) -> None:
    environ = config_file(
        'archive_ttl = "3d"\n'
        's3_bucket = "from-file"\n'
        "s3_part_size = 10485760\n"
        'default_formats = ["csv", "json"]\n'
        "worker_concurrency = 4\n"
    )
    environ["HANDOVER_ARCHIVE_TTL"] = "2h"
    environ["HANDOVER_WORKER_CONCURRENCY"] = "7"

    settings = Settings.load(environ)

    assert settings.archive_ttl == timedelta(hours=2)
    assert settings.worker_concurrency == 7
    assert settings.s3_bucket == "from-file"
    assert settings.s3_part_size == 10 * 2**20
    assert settings.default_formats == ("csv", "json")


def test_connector_tables_become_connector_configs(
    config_file: Callable[[str], dict[str, str]],
) -> None:
    environ = config_file(
        "[connectors.crm]\n"
        'type = "hubspot"\n'
        'api_url = "http://127.0.0.1:9/crm"\n'
        "page_size = 50\n"
        "\n"
        "[connectors.app-db]\n"
        'type = "postgres"\n'
    )

    settings = Settings.load(environ)

    assert settings.connectors == (
        ConnectorConfig("crm", "hubspot", {"api_url": "http://127.0.0.1:9/crm", "page_size": 50}),
        ConnectorConfig("app-db", "postgres", {}),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("900", timedelta(seconds=900)),
        ("900s", timedelta(seconds=900)),
        ("7d", timedelta(days=7)),
        ("1d 2h", timedelta(days=1, hours=2)),
        ("2.5", timedelta(seconds=2.5)),
        ("250ms", timedelta(milliseconds=250)),
        (45, timedelta(seconds=45)),
    ],
)
def test_durations_parse(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["abc", "5x", "1h30", "h", "", "-5", True])
def test_bad_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_negative_number_of_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8MiB", 8 * 2**20),
        ("5MB", 5_000_000),
        ("2 GiB", 2 * 2**30),
        ("64KiB", 64 * 2**10),
        ("1000", 1000),
        ("12B", 12),
        (4096, 4096),
    ],
)
def test_sizes_parse(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1.5MiB", "8mib", "MiB", "8 TiB", ""])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HANDOVER_ARCHIVE_TTL", "abc"),
        ("HANDOVER_ARCHIVE_TTL", "0s"),
        ("HANDOVER_LINK_TTL", "0"),
        ("HANDOVER_S3_PART_SIZE", "1MiB"),
        ("HANDOVER_S3_PART_SIZE", "6GiB"),
        ("HANDOVER_S3_PART_SIZE", "lots"),
        ("HANDOVER_S3_SERVER_SIDE_COPY", "sometimes"),
        ("HANDOVER_S3_SERVER_SIDE_COPY", ""),
        ("HANDOVER_REDIS_URL", "http://x"),
        ("HANDOVER_REDIS_URL", "not a url"),
        ("HANDOVER_S3_ENDPOINT_URL", "localhost:9000"),
        ("HANDOVER_WORKER_CONCURRENCY", "0"),
        ("HANDOVER_WORKER_CONCURRENCY", "many"),
        ("HANDOVER_DEFAULT_FORMATS", "json,xml"),
        ("HANDOVER_DEFAULT_FORMATS", " , "),
    ],
)
def test_bad_environment_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load({variable: value})

    assert str(raised.value).startswith(f"{variable}: ")


def test_short_jwt_secret_is_refused_without_echoing_it() -> None:
    short = "too-short-secret"
    with pytest.raises(SettingsError) as raised:
        Settings.load({"HANDOVER_JWT_SECRET": short})

    assert str(raised.value).startswith("HANDOVER_JWT_SECRET: ")
    assert "32" in str(raised.value)
    assert short not in str(raised.value)


def test_bad_file_value_names_its_variable(config_file: Callable[[str], dict[str, str]]) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(config_file("archive_ttl = true\n"))

    assert str(raised.value).startswith("HANDOVER_ARCHIVE_TTL: ")


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SettingsError) as raised:
        Settings.load({"HANDOVER_CONFIG": str(missing)})

    assert str(raised.value).startswith("HANDOVER_CONFIG: ")
    assert str(missing) in str(raised.value)


def test_malformed_toml_is_refused(config_file: Callable[[str], dict[str, str]]) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(config_file('archive_ttl = "7d\n'))

    assert str(raised.value).startswith("HANDOVER_CONFIG: ")
    assert "TOML" in str(raised.value)


@pytest.mark.parametrize(
    ("toml", "mentions"),
    [
        ('archive_tll = "7d"\n', "'archive_tll'"),
        ("[connectors.crm]\nurl = 'http://x'\n", "connectors.crm"),
        ("[connectors.crm]\ntype = 5\n", "connectors.crm"),
        ("[connectors.Bad_Name]\ntype = 'x'\n", "'Bad_Name'"),
        ("connectors = 5\n", "[connectors]"),
        ("[connectors]\ncrm = 'hubspot'\n", "connectors.crm"),
    ],
)
def test_bad_config_file_content_is_refused(
    config_file: Callable[[str], dict[str, str]], toml: str, mentions: str
) -> None:
    with pytest.raises(SettingsError, match="handover.toml") as raised:
        Settings.load(config_file(toml))

    assert mentions in str(raised.value)


@pytest.mark.parametrize(
    "toml",
    ['archive_tll = "7d"\n', "[connectors.crm]\nurl = 'http://x'\n"],
    ids=["unknown-key", "connector-without-type"],
)
def test_config_file_content_errors_name_the_variable(
    config_file: Callable[[str], dict[str, str]], toml: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.load(config_file(toml))

    assert str(raised.value).startswith("HANDOVER_CONFIG: ")


@pytest.mark.parametrize(
    "redis_url",
    [
        f"redis://default:{REDIS_PASSWORD}@redis.internal:6379/0",
        f"rediss://:{REDIS_PASSWORD}@redis.internal:6380",
    ],
)
def test_repr_hides_the_secrets(redis_url: str) -> None:
    settings = Settings.load({"HANDOVER_REDIS_URL": redis_url, "HANDOVER_JWT_SECRET": JWT_SECRET})

    for text in (repr(settings), str(settings)):
        assert REDIS_PASSWORD not in text
        assert JWT_SECRET not in text
        assert "redis.internal" in text
        assert ":****@" in text
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == redis_url


def test_repr_shows_a_redis_url_without_password() -> None:
    settings = Settings.load({"HANDOVER_REDIS_URL": "redis://127.0.0.1:6379/3"})
    assert "redis_url='redis://127.0.0.1:6379/3'" in repr(settings)


def test_secret_never_shows_itself() -> None:
    secret = Secret(JWT_SECRET)

    assert JWT_SECRET not in repr(secret)
    assert JWT_SECRET not in str(secret)
    assert JWT_SECRET not in f"{secret}"
    assert secret == Secret(JWT_SECRET)
    assert secret != Secret(JWT_SECRET + "x")


def test_settings_from_code_take_typed_values_and_are_checked() -> None:
    settings = Settings(
        redis_url=Secret("redis://127.0.0.1:6379/2"),
        data_dir=Path("/srv/handover"),
        archive_ttl=timedelta(hours=2),
        identity_claims=(("crm_id", "hubspot_contact_id"),),
    )

    assert settings.redis_url == Secret("redis://127.0.0.1:6379/2")
    assert settings.data_dir == Path("/srv/handover")
    assert settings.archive_ttl == timedelta(hours=2)
    with pytest.raises(SettingsError, match=r"^HANDOVER_WORKER_CONCURRENCY: "):
        Settings(worker_concurrency=0)
    with pytest.raises(SettingsError, match=r"^HANDOVER_LINK_TTL: "):
        Settings(link_ttl=timedelta(0))


def test_settings_read_only_the_environ_they_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDOVER_ARCHIVE_TTL", "1h")
    monkeypatch.setenv("DEADLINE", "1d")

    assert Settings() == Settings.load({})
    assert Settings.load({}).archive_ttl == timedelta(days=7)


def test_tables_come_only_from_the_file() -> None:
    settings = Settings.load({"HANDOVER_CONNECTORS": "crm", "HANDOVER_RETENTION": "7d"})

    assert settings.connectors == () and settings.retention == ()
    assert "HANDOVER_CONNECTORS" not in VARIABLES and "HANDOVER_RETENTION" not in VARIABLES


def test_a_copy_keeps_the_rest() -> None:
    settings = Settings.load({"HANDOVER_JWT_SECRET": JWT_SECRET})

    copy = settings.model_copy(update={"public_url": "http://127.0.0.1:8080"})

    assert copy.public_url == "http://127.0.0.1:8080"
    assert copy.jwt_secret == settings.jwt_secret and settings.public_url is None


@pytest.mark.parametrize(
    "redis_url",
    [
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster/2",
        "redis+sentinel://sentinel.internal/mymaster",
        "redis+sentinel://[::1]:26380/mymaster/0",
    ],
)
def test_sentinel_urls_are_accepted(redis_url: str) -> None:
    settings = Settings.load({"HANDOVER_REDIS_URL": redis_url})
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == redis_url
    assert f"redis_url='{redis_url}'" in repr(settings)


def test_a_sentinel_url_s_password_is_hidden() -> None:
    url = f"redis+sentinel://:{REDIS_PASSWORD}@s1.internal:26379,s2.internal:26379/mymaster/1"
    settings = Settings.load({"HANDOVER_REDIS_URL": url})

    for text in (repr(settings), str(settings)):
        assert REDIS_PASSWORD not in text
        assert "redis+sentinel://:****@s1.internal:26379,s2.internal:26379/mymaster/1" in text


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        ("redis+sentinel://s1:26379,s2:26379", "no master name"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel://s1:26379,s2:many/mymaster", "Sentinel 2 is not host[:port]"),
        ("redis+sentinel://s1:26379,,s3/mymaster", "Sentinel 2 is not host[:port]"),
        ("redis+sentinel://s1:0/mymaster", "Sentinel 1 is not host[:port]"),
        ("redis+sentinel://s1:70000/mymaster", "Sentinel 1 is not host[:port]"),
        ("redis+sentinel://s1/mymaster/first", "whole number"),
        ("redis+sentinel://s1/mymaster/0/extra", "whole number"),
        ("redis+sentinel://s1/mymaster?db=2", "no ?query"),
        ("redis://redis.internal:port/0", "port from 1 to 65535"),
        ("redis://redis.internal:6379/zero", "whole database number"),
    ],
)
def test_malformed_redis_urls_are_refused_in_one_line_without_the_password(
    url: str, mentions: str
) -> None:
    with_password = url.replace("://", f"://:{REDIS_PASSWORD}@", 1)
    with pytest.raises(SettingsError) as raised:
        Settings.load({"HANDOVER_REDIS_URL": with_password})

    message = str(raised.value)
    assert message.startswith("HANDOVER_REDIS_URL: ")
    assert mentions in message
    assert REDIS_PASSWORD not in message
    assert "\n" not in message
