"""Retention and privacy (#8, docs/retention.md): retention policies, GDPR and delete jobs."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from web.schemas.common import ResponseSchema, StrictSchema, Timestamp

MAX_RETENTION_DAYS = 36500


class RetentionPatchSchema(StrictSchema):
    retention_seconds = fields.Integer(
        allow_none=True,
        validate=validate.Range(0, MAX_RETENTION_DAYS * 86400),
        metadata={"description": "null: inherit the server default; 0: keep forever"},
    )
    retention_days = fields.Float(
        allow_none=True,
        validate=validate.Range(0, MAX_RETENTION_DAYS),
        metadata={"description": "the same in days (fractions allowed)"},
    )

    @validates_schema
    def _exactly_one(self, data: dict[str, Any], **_: Any) -> None:
        if len(data) != 1:
            raise ValidationError("give exactly one of retention_seconds, retention_days")


class RetentionSchema(ResponseSchema):
    conversation_id = fields.String()
    retention_seconds = fields.Integer(
        allow_none=True, metadata={"description": "the override; null when inherited"}
    )
    inherited = fields.Boolean()
    effective_seconds = fields.Integer(
        allow_none=True, metadata={"description": "what applies; null keeps forever"}
    )
    grace_seconds = fields.Integer()


class RetentionDefaultsSchema(ResponseSchema):
    retention_days = fields.Float(allow_none=True)
    retention_seconds = fields.Integer(allow_none=True)
    grace_seconds = fields.Integer()
    interval_seconds = fields.Integer()


class EraseSchema(StrictSchema):
    reason = fields.String(validate=validate.Length(1, 500))


class JobSchema(ResponseSchema):
    id = fields.String()
    kind = fields.String(
        validate=validate.OneOf(("gdpr_export", "gdpr_erase", "conversation_delete"))
    )
    state = fields.String(
        validate=validate.OneOf(("queued", "running", "done", "failed", "expired"))
    )
    done = fields.Integer()
    total = fields.Integer()
    error = fields.String(allow_none=True)
    created_at = Timestamp()
    updated_at = Timestamp()
    user_id = fields.String(metadata={"description": "export/erase: the user (erased: pseudonym)"})
    conversation_id = fields.String()
    size = fields.Integer(metadata={"description": "export: bytes of the zip"})
    expires_at = Timestamp(metadata={"description": "export: deleted after this"})
    download_url = fields.String(metadata={"description": "export: signed, short-lived"})
    download_expires_at = Timestamp()
    result = fields.Dict(metadata={"description": "erase: counts of what changed"})


class ExportDownloadQuery(StrictSchema):
    exp = fields.Integer(required=True)
    sig = fields.String(required=True, validate=validate.Length(1, 100))
