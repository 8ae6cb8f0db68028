"""Settings shared by the web app, the Celery worker and the CLI.

One frozen object built from defaults, then the environment (and `.env`), then an explicit
mapping (tests). Web and worker read the same variables, so a worker started by hand with the
same environment as the web node behaves the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dotenv import load_dotenv


def _data_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("PARLEY_DATA_DIR") or "var").resolve()


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    redis_url: str
    broker_url: str
    env: str = "development"
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_leeway_s: int = 10
    master_keys: str = ""
    edit_window_s: int = 600
    max_text_length: int = 4000
    max_body_bytes: int = 256 * 1024
    max_members: int = 1000
    page_limit_default: int = 50
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
    rotation_batch: int = 500
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
    rate_limits: str = ""  # on | off; empty: on, except under test (a test turns them on)
    limit_post_user: str = "30/10 seconds"
    limit_post_ip: str = "600/minute"
    limit_upload_user: str = "20/minute"
    limit_upload_ip: str = "200/minute"
    limit_conversation_user: str = "20/minute"
    limit_conversation_ip: str = "300/minute"
    limit_failed_auth_ip: str = "30/minute"
    testing: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

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


_ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "broker_url": "CELERY_BROKER_URL",
    "env": "PARLEY_ENV",
    "jwt_secret": "PARLEY_JWT_SECRET",
    "jwt_public_key": "PARLEY_JWT_PUBLIC_KEY",
    "jwt_leeway_s": "PARLEY_JWT_LEEWAY_S",
    "master_keys": "PARLEY_MASTER_KEYS",
    "edit_window_s": "PARLEY_EDIT_WINDOW_S",
    "max_text_length": "PARLEY_MAX_TEXT_LENGTH",
    "max_body_bytes": "PARLEY_MAX_BODY_BYTES",
    "max_members": "PARLEY_MAX_MEMBERS",
    "storage": "PARLEY_STORAGE",
    "s3_bucket": "PARLEY_S3_BUCKET",
    "s3_prefix": "PARLEY_S3_PREFIX",
    "s3_endpoint_url": "PARLEY_S3_ENDPOINT_URL",
    "s3_region": "PARLEY_S3_REGION",
    "s3_access_key_id": "PARLEY_S3_ACCESS_KEY_ID",
    "s3_secret_access_key": "PARLEY_S3_SECRET_ACCESS_KEY",
    "max_file_bytes": "PARLEY_MAX_FILE_BYTES",
    "max_image_bytes": "PARLEY_MAX_IMAGE_BYTES",
    "max_image_pixels": "PARLEY_MAX_IMAGE_PIXELS",
    "download_ttl_s": "PARLEY_DOWNLOAD_TTL_S",
    "outbox_sweep_s": "PARLEY_OUTBOX_SWEEP_S",
    "outbox_stale_s": "PARLEY_OUTBOX_STALE_S",
    "stream_maxlen": "PARLEY_STREAM_MAXLEN",
    "rotation_batch": "PARLEY_ROTATION_BATCH",
    "moderation_policies": "PARLEY_MODERATION_POLICIES",
    "push_delay_s": "PARLEY_PUSH_DELAY_S",
    "push_ttl_s": "PARLEY_PUSH_TTL_S",
    "push_preview": "PARLEY_PUSH_PREVIEW",
    "push_max_attempts": "PARLEY_PUSH_MAX_ATTEMPTS",
    "push_retry_base_s": "PARLEY_PUSH_RETRY_BASE_S",
    "push_retry_max_s": "PARLEY_PUSH_RETRY_MAX_S",
    "push_timeout_s": "PARLEY_PUSH_TIMEOUT_S",
    "push_sweep_s": "PARLEY_PUSH_SWEEP_S",
    "push_email_digest_s": "PARLEY_PUSH_EMAIL_DIGEST_S",
    "push_allow_private_targets": "PARLEY_PUSH_ALLOW_PRIVATE_TARGETS",
    "vapid_private_key": "PARLEY_VAPID_PRIVATE_KEY",
    "vapid_subject": "PARLEY_VAPID_SUBJECT",
    "smtp_url": "PARLEY_SMTP_URL",
    "smtp_from": "PARLEY_SMTP_FROM",
    "platform_webhook_url": "PARLEY_PLATFORM_WEBHOOK_URL",
    "platform_webhook_secret": "PARLEY_PLATFORM_WEBHOOK_SECRET",
    "reports_auto_hold": "PARLEY_REPORTS_AUTO_HOLD",
    "flood_conversations": "PARLEY_FLOOD_CONVERSATIONS",
    "flood_window_s": "PARLEY_FLOOD_WINDOW_S",
    "retention_days": "PARLEY_RETENTION_DAYS",
    "retention_grace_s": "PARLEY_RETENTION_GRACE_S",
    "retention_interval_s": "PARLEY_RETENTION_INTERVAL_S",
    "retention_batch": "PARLEY_RETENTION_BATCH",
    "export_keep_s": "PARLEY_EXPORT_KEEP_S",
    "jwt_audience": "PARLEY_JWT_AUDIENCE",
    "jwt_issuer": "PARLEY_JWT_ISSUER",
    "metrics_token": "PARLEY_METRICS_TOKEN",
    "cors_origins": "PARLEY_CORS_ORIGINS",
    "hsts_seconds": "PARLEY_HSTS_SECONDS",
    "trusted_proxies": "PARLEY_TRUSTED_PROXIES",
    "access_log": "PARLEY_ACCESS_LOG",
    "rate_limits": "PARLEY_RATE_LIMITS",
    "limit_post_user": "PARLEY_LIMIT_POST_USER",
    "limit_post_ip": "PARLEY_LIMIT_POST_IP",
    "limit_upload_user": "PARLEY_LIMIT_UPLOAD_USER",
    "limit_upload_ip": "PARLEY_LIMIT_UPLOAD_IP",
    "limit_conversation_user": "PARLEY_LIMIT_CONVERSATION_USER",
    "limit_conversation_ip": "PARLEY_LIMIT_CONVERSATION_IP",
    "limit_failed_auth_ip": "PARLEY_LIMIT_FAILED_AUTH_IP",
}


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build settings: defaults < environment (.env does not override real env) < overrides."""
    load_dotenv(override=False)
    env = os.environ
    overrides = dict(overrides or {})
    data_dir = Path(overrides.pop("data_dir", None) or _data_dir(env)).resolve()
    redis_url = overrides.get("redis_url") or env.get("REDIS_URL") or _announced_redis(data_dir)
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": f"sqlite:///{data_dir / 'parley.db'}",
        "redis_url": redis_url,
        "broker_url": redis_url,
    }
    types = {f.name: f.type for f in fields(Settings)}
    for name, var in _ENV_NAMES.items():
        raw = env.get(var)
        if raw not in (None, ""):
            values[name] = _coerce(raw, types[name])
    values.update(overrides)
    if not values.get("broker_url"):
        values["broker_url"] = values["redis_url"]
    if not values["redis_url"]:
        raise RuntimeError(
            "REDIS_URL is not set and no embedded Redis is running. Start the service with "
            "`make run` (it starts one), or export REDIS_URL (e.g. redis://127.0.0.1:6379/0)."
        )
    return Settings(**values)


def _announced_redis(data_dir: Path) -> str:
    """The embedded Redis `make run` started announces its URL here, for CLI commands run
    from another terminal while the service is up."""
    path = data_dir / "redis.url"
    return path.read_text().strip() if path.exists() else ""


def _coerce(raw: str, annotation: object) -> Any:
    kind = str(annotation)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        return raw.lower() in {"1", "true", "yes", "on"}
    return raw


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
