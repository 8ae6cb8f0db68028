"""Settings shared by the web app, the Celery worker and the CLI.

One frozen object built from defaults, then the environment (and `.env`), then an explicit
mapping (tests). Web and worker read the same variables, so a worker started by hand with the
same environment as the web node behaves the same.

Setting `name` is read from `PARLEY_NAME`, typed and validated by pydantic-settings, except the
three URLs every deployment tool already names: DATABASE_URL, REDIS_URL, CELERY_BROKER_URL.
Flags take 1/true/yes/on or 0/false/no/off; a value that does not parse stops start-up with
the variable's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_FILE = Path(__file__).resolve().parent.parent / ".env"
DEFAULT_DATA_DIR = Path("var")

# Set by code only (the caller of create_app, tests), never from a variable: PARLEY_TESTING must
# not be a way to switch rate limits off in production.
CODE_ONLY = frozenset({"testing", "extra", "page_limit_default", "page_limit_max", "db_pre_ping"})


class _Environment(EnvSettingsSource):
    """The environment variables, for every setting except the code-only ones."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in CODE_ONLY:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(BaseSettings):
    """Build it with `load_settings`, which first puts `.env` below the real environment."""

    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_ignore_empty=True,  # `PARLEY_X=` means the default, as an unset variable does
        frozen=True,
        extra="forbid",  # a misspelt override fails instead of being dropped
        validate_by_name=True,
    )

    data_dir: Path = Field(DEFAULT_DATA_DIR, validate_default=True)
    # Read from their conventional variables (validate_by_name: overrides use the setting's
    # name). Empty here: derived by the validators below unless given.
    database_url: str = Field("", validation_alias="DATABASE_URL", validate_default=True)
    redis_url: str = Field("", validation_alias="REDIS_URL", validate_default=True)
    broker_url: str = Field("", validation_alias="CELERY_BROKER_URL", validate_default=True)
    env: str = "development"
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_leeway_s: int = 10
    master_keys: str = ""
    edit_window_s: int = 600
    max_text_length: int = 4000
    max_body_bytes: int = 256 * 1024
    max_members: int = 1000
    page_limit_default: int = 50  # code-only (CODE_ONLY), like testing and extra
    page_limit_max: int = 200
    storage: str = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    max_file_bytes: int = 10 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    download_ttl_s: int = 300
    outbox_sweep_s: float = 5.0
    outbox_stale_s: float = 10.0
    stream_maxlen: int = 1000
    ingest_pace_lag_ms: float = 0.0  # 0: never pace (domain/ingest.Pacer)
    ingest_pace_max_ms: float = 250.0
    rotation_batch: int = 500
    search_index: bool = True  # off: no message search, and no index written (docs/search.md)
    moderation_policies: str = ""
    reports_auto_hold: int = 3
    flood_conversations: int = 5
    flood_window_s: int = 300
    # Offline push (#7, docs/notifications.md)
    push_delay_s: float = 10.0
    push_ttl_s: int = 3600
    push_preview: str = "full"
    push_max_attempts: int = 8
    push_retry_base_s: float = 2.0
    push_retry_max_s: float = 600.0
    push_timeout_s: float = 10.0
    push_sweep_s: float = 30.0
    push_email_digest_s: float = 900.0
    push_allow_private_targets: bool = False
    vapid_private_key: str = ""
    vapid_subject: str = "mailto:parley@localhost"
    smtp_url: str = ""
    smtp_from: str = "Parley <parley@localhost>"
    platform_webhook_url: str = ""
    platform_webhook_secret: str = ""
    # Retention and privacy (#8, docs/retention.md). 0 days: keep messages forever.
    retention_days: float = 0.0
    retention_grace_s: float = 7 * 24 * 3600.0
    retention_interval_s: float = 600.0
    retention_batch: int = 500
    export_keep_s: float = 24 * 3600.0
    # Operations and edge security (#10, docs/operations.md)
    jwt_audience: str = ""
    jwt_issuer: str = ""
    metrics_token: str = ""
    cors_origins: str = ""
    hsts_seconds: int = 0
    trusted_proxies: int = 0
    access_log: bool = True
    task_events: bool = False  # Celery task events always on (Flower: docs/operations.md)
    api_key_cache_s: float = 5.0  # how long a web process trusts a verified key (web/auth.py)
    rate_limits: str = ""  # on | off; empty: on, except under test (a test turns them on)
    limit_post_user: str = "30/10 seconds"
    limit_post_ip: str = "600/minute"
    limit_upload_user: str = "20/minute"
    limit_upload_ip: str = "200/minute"
    limit_conversation_user: str = "20/minute"
    limit_conversation_ip: str = "300/minute"
    limit_failed_auth_ip: str = "30/minute"
    # Code-only: a PostgreSQL connection is tested (a round trip) each time it leaves the pool.
    # The worker turns it off (worker.py): its tasks retry on a dropped connection anyway.
    db_pre_ping: bool = True
    testing: bool = False
    extra: Mapping[str, Any] = Field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def moderation_overrides(self) -> dict[str, dict[str, str]] | None:
        """`PARLEY_MODERATION_POLICIES`: JSON {conversation type: {label: action}}, validated."""
        from moderation import parse_policy_overrides

        return (
            parse_policy_overrides(self.moderation_policies) if self.moderation_policies else None
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides, then the environment. No dotenv source: load_settings has already loaded
        # `.env` into os.environ, where a variable set in the real environment, even set empty,
        # keeps the file's value out; pydantic's own reading would let it through.
        return init_settings, _Environment(settings_cls)

    # Derived defaults, validated in field order: data_dir first, then what follows from it.
    # A value given for any of them wins.
    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, data_dir: Path) -> Path:
        return data_dir.resolve()

    @field_validator("database_url")
    @classmethod
    def _database_in_data_dir(cls, url: str, info: ValidationInfo) -> str:
        return url or f"sqlite:///{info.data['data_dir'] / 'parley.db'}"

    @field_validator("redis_url")
    @classmethod
    def _redis_announced(cls, url: str, info: ValidationInfo) -> str:
        url = url or _announced_redis(info.data["data_dir"])
        if not url:
            raise RuntimeError(
                "REDIS_URL is not set and no embedded Redis is running. Start the service with "
                "`make run` (it starts one), or export REDIS_URL (e.g. redis://127.0.0.1:6379/0)."
            )
        return url

    @field_validator("broker_url")
    @classmethod
    def _broker_is_redis(cls, url: str, info: ValidationInfo) -> str:
        return url or info.data["redis_url"]


def load_settings(
    overrides: Mapping[str, Any] | None = None, *, env_file: Path | None = ENV_FILE
) -> Settings:
    """Build settings: defaults < environment (.env does not override real env) < overrides.

    `.env` is loaded into os.environ, not only into Settings, because LOG_LEVEL, LOG_FORMAT
    and PROMETHEUS_MULTIPROC_DIR are read from there.
    """
    if env_file is not None:
        load_dotenv(env_file, override=False)
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise ValueError(_explain(exc)) from None


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy with `changes`, validated like overrides; the environment is not read again."""
    try:
        return Settings.model_validate({**dict(settings), **changes})
    except ValidationError as exc:
        raise ValueError(_explain(exc)) from None


def _announced_redis(data_dir: Path) -> str:
    """The embedded Redis `make run` started announces its URL here, for CLI commands run
    from another terminal while the service is up."""
    path = data_dir / "redis.url"
    return path.read_text().strip() if path.exists() else ""


def _variable(name: str) -> str | None:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, str):
        return alias
    return None if name in CODE_ONLY else f"PARLEY_{name.upper()}"


def _explain(exc: ValidationError) -> str:
    """One line per bad value, naming the variable to fix (pydantic names only the field)."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if name not in Settings.model_fields:
            problems.append(f"unknown setting {name!r}")
            continue
        variable = _variable(name)
        where = f"{variable} (setting {name})" if variable else f"setting {name}"
        problems.append(f"{where} = {error['input']!r}: {error['msg']}")
    return "invalid configuration: " + "; ".join(problems)
