"""marshmallow schemas: request validation (unknown fields rejected) and the OpenAPI shapes."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import (
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from models import (
    ATTACHMENT_KINDS,
    ATTACHMENT_STATES,
    CONVERSATION_STATUSES,
    CONVERSATION_TYPES,
    MESSAGE_STATES,
    MESSAGE_TYPES,
    NOTIFICATION_LEVELS,
    PARTICIPANT_ROLES,
)

MAX_METADATA_BYTES = 8 * 1024
UserId = fields.String(validate=validate.Length(1, 128))


def _small_json(value: dict[str, Any]) -> None:
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ValidationError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")


class StrictSchema(Schema):
    """Request input: unknown fields are errors. (Text no database can store, such as NUL, is
    refused before any schema runs: web/http.py.)"""

    class Meta:
        unknown = RAISE


# --- requests ---------------------------------------------------------------------------------


class ContextSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.Length(1, 64))
    id = fields.String(required=True, validate=validate.Length(1, 128))


class ConversationCreateSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.OneOf(CONVERSATION_TYPES))
    members = fields.List(
        fields.String(validate=validate.Length(1, 128)),
        required=True,
        validate=validate.Length(min=1),
    )
    subject = fields.String(allow_none=True, validate=validate.Length(max=200))
    context = fields.Nested(ContextSchema, allow_none=True)
    metadata = fields.Dict(keys=fields.String(), validate=_small_json)


class ConversationPatchSchema(StrictSchema):
    subject = fields.String(allow_none=True, validate=validate.Length(max=200))
    status = fields.String(validate=validate.OneOf(CONVERSATION_STATUSES))
    metadata = fields.Dict(keys=fields.String(), validate=_small_json)

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give at least one of subject, status, metadata")


class ConversationListQuery(StrictSchema):
    status = fields.String(validate=validate.OneOf(CONVERSATION_STATUSES))
    context_type = fields.String(validate=validate.Length(1, 64))
    context_id = fields.String(validate=validate.Length(1, 128))
    archived = fields.Boolean()
    unread_only = fields.Boolean(load_default=False)
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)


class MembersAddSchema(StrictSchema):
    user_ids = fields.List(
        fields.String(validate=validate.Length(1, 128)),
        required=True,
        validate=validate.Length(1, 100),
    )
    role = fields.String(load_default="member", validate=validate.OneOf(PARTICIPANT_ROLES))


class MemberRoleSchema(StrictSchema):
    role = fields.String(required=True, validate=validate.OneOf(PARTICIPANT_ROLES))


class MySettingsSchema(StrictSchema):
    archived = fields.Boolean()
    muted_until = fields.AwareDateTime(allow_none=True)
    notification_level = fields.String(validate=validate.OneOf(NOTIFICATION_LEVELS))

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give at least one of archived, muted_until, notification_level")


class MessageCreateSchema(StrictSchema):
    text = fields.String(allow_none=True)
    client_msg_id = fields.String(validate=validate.Length(1, 128))
    type = fields.String(load_default="text", validate=validate.OneOf(MESSAGE_TYPES))
    reply_to = fields.String(allow_none=True, validate=validate.Length(1, 26))
    attachments = fields.List(
        fields.String(validate=validate.Length(1, 40)), validate=validate.Length(max=10)
    )
    metadata = fields.Dict(keys=fields.String(), validate=_small_json)


class MessageListQuery(StrictSchema):
    after_seq = fields.Integer(validate=validate.Range(min=0))
    before_seq = fields.Integer(validate=validate.Range(min=1))
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)
    sender_id = fields.String(validate=validate.Length(1, 128))
    since = fields.AwareDateTime()
    until = fields.AwareDateTime()
    pinned = fields.Boolean()
    has_attachments = fields.Boolean()

    @validates_schema
    def _one_direction(self, data: dict[str, Any], **_: Any) -> None:
        if "cursor" in data and ("after_seq" in data or "before_seq" in data):
            raise ValidationError("use either cursor or after_seq/before_seq", "cursor")


class MessagePatchSchema(StrictSchema):
    text = fields.String(required=True)


class ReportCreateSchema(StrictSchema):
    reason = fields.String(
        required=True,
        validate=validate.OneOf(
            ("spam", "abuse", "harassment", "contact_details", "fraud", "other")
        ),
    )
    note = fields.String(allow_none=True, validate=validate.Length(max=1000))


class ReadSchema(StrictSchema):
    seq = fields.Integer(required=True, validate=validate.Range(min=0))


# --- responses (documentation of the shapes domain/render.py produces) -------------------------


class ProblemSchema(Schema):
    class Meta:
        unknown = INCLUDE  # RFC 9457 extension members, e.g. `moderation` on a refused edit

    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    request_id = fields.String()


class ModerationSchema(Schema):
    action = fields.String(validate=validate.OneOf(("allow", "mask", "hold", "reject")))
    labels = fields.List(fields.String())
    reason = fields.String()


class ReactionSummarySchema(Schema):
    emoji = fields.String()
    count = fields.Integer()
    me = fields.Boolean()


class MessageSchema(Schema):
    id = fields.String()
    conversation_id = fields.String()
    seq = fields.Integer()
    sender_id = fields.String(allow_none=True)
    type = fields.String(validate=validate.OneOf(MESSAGE_TYPES))
    text = fields.String(allow_none=True)
    state = fields.String(validate=validate.OneOf(MESSAGE_STATES))
    created_at = fields.DateTime()
    edited_at = fields.DateTime(allow_none=True)
    deleted = fields.Boolean()
    reply_to = fields.String(allow_none=True)
    attachments = fields.List(fields.Nested("AttachmentEmbedSchema"))
    reactions = fields.List(fields.Nested(ReactionSummarySchema))
    pinned = fields.Boolean()
    metadata = fields.Dict()
    client_msg_id = fields.String(metadata={"description": "sender only"})
    moderation = fields.Nested(
        ModerationSchema, allow_none=True, metadata={"description": "sender and moderators only"}
    )
    status = fields.String(
        validate=validate.OneOf(("sent", "delivered", "seen")),
        metadata={"description": "sender only"},
    )


class MessagePageSchema(Schema):
    items = fields.List(fields.Nested(MessageSchema))
    next_cursor = fields.String(allow_none=True)


class MemberSchema(Schema):
    user_id = fields.String()
    role = fields.String(validate=validate.OneOf(PARTICIPANT_ROLES))
    joined_at = fields.DateTime()


class MyMembershipSchema(Schema):
    role = fields.String()
    read_seq = fields.Integer()
    delivered_seq = fields.Integer()
    archived = fields.Boolean()
    muted_until = fields.DateTime(allow_none=True)
    notification_level = fields.String()


class PreviewSchema(Schema):
    id = fields.String()
    seq = fields.Integer()
    sender_id = fields.String(allow_none=True)
    type = fields.String()
    text = fields.String(allow_none=True)
    deleted = fields.Boolean()
    created_at = fields.DateTime()


class ConversationSchema(Schema):
    id = fields.String()
    type = fields.String(validate=validate.OneOf(CONVERSATION_TYPES))
    members = fields.List(fields.Nested(MemberSchema))
    subject = fields.String(allow_none=True)
    context = fields.Nested(ContextSchema, allow_none=True)
    status = fields.String(validate=validate.OneOf(CONVERSATION_STATUSES))
    metadata = fields.Dict()
    created_at = fields.DateTime()
    last_activity_at = fields.DateTime()
    last_seq = fields.Integer()
    unread_count = fields.Integer()
    last_message = fields.Nested(PreviewSchema, allow_none=True)
    me = fields.Nested(MyMembershipSchema)


class ConversationPageSchema(Schema):
    items = fields.List(fields.Nested(ConversationSchema))
    next_cursor = fields.String(allow_none=True)


class ReadStateSchema(Schema):
    conversation_id = fields.String()
    read_seq = fields.Integer()
    unread_count = fields.Integer()


class UnreadTotalsSchema(Schema):
    total = fields.Integer()
    conversations = fields.Integer()


class ReportSchema(Schema):
    id = fields.String()
    message_id = fields.String()
    reason = fields.String()
    created_at = fields.DateTime()


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())


# --- moderation -------------------------------------------------------------------------------


class QueueQuery(StrictSchema):
    kind = fields.String(
        load_default="held", validate=validate.OneOf(("held", "reported", "flagged"))
    )
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)


class ApproveSchema(StrictSchema):
    reason = fields.String(validate=validate.Length(1, 500))
    text = fields.String(validate=validate.Length(1, 4000))


class RejectSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(1, 500))


class MuteSchema(StrictSchema):
    minutes = fields.Integer(required=True, validate=validate.Range(1, 60 * 24 * 365))
    reason = fields.String(required=True, validate=validate.Length(1, 500))


class BanSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(1, 500))


class ModerationUserSchema(Schema):
    user_id = fields.String()
    muted_until = fields.DateTime(allow_none=True)
    banned = fields.Boolean()


class QueueItemSchema(MessageSchema):
    open_reports = fields.Integer()


class QueuePageSchema(Schema):
    items = fields.List(fields.Nested(QueueItemSchema))
    next_cursor = fields.String(allow_none=True)


class AuditQuery(StrictSchema):
    actor = fields.String(validate=validate.Length(1, 160))
    action = fields.String(validate=validate.Length(1, 64))
    target_type = fields.String(validate=validate.Length(1, 32))
    target_id = fields.String(validate=validate.Length(1, 128))
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)


class AuditEntrySchema(Schema):
    id = fields.Integer()
    actor = fields.String()
    action = fields.String()
    target_type = fields.String()
    target_id = fields.String()
    reason = fields.String(allow_none=True)
    detail = fields.Dict()
    created_at = fields.DateTime()


class AuditPageSchema(Schema):
    items = fields.List(fields.Nested(AuditEntrySchema))
    next_cursor = fields.String(allow_none=True)


# --- attachments ------------------------------------------------------------------------------


class AttachmentUploadForm(Schema):
    """The multipart/form-data body of an upload (documented; the view streams it itself)."""

    conversation_id = fields.String(required=True, metadata={"description": "field before file"})
    file = fields.Raw(
        required=True,
        metadata={
            "type": "string",
            "format": "binary",
            "description": "the file; its type is sniffed from the bytes, not the name",
        },
    )


class AttachmentVariantSchema(Schema):
    content_type = fields.String()
    size = fields.Integer()
    width = fields.Integer()
    height = fields.Integer()
    url = fields.String(metadata={"description": "signed download URL, bound to the caller"})


class AttachmentEmbedSchema(Schema):
    """An attachment as embedded in a message (the same for every viewer: no URLs)."""

    id = fields.String()
    state = fields.String(validate=validate.OneOf(ATTACHMENT_STATES))
    kind = fields.String(validate=validate.OneOf(ATTACHMENT_KINDS))
    content_type = fields.String()
    filename = fields.String()
    size = fields.Integer()
    width = fields.Integer(allow_none=True)
    height = fields.Integer(allow_none=True)
    variants = fields.Dict(
        keys=fields.String(validate=validate.OneOf(("original", "thumb", "medium", "large"))),
        values=fields.Nested(AttachmentVariantSchema),
    )
    reason = fields.String(metadata={"description": "why it was rejected"})
    created_at = fields.DateTime()


class AttachmentSchema(AttachmentEmbedSchema):
    conversation_id = fields.String()
    message_id = fields.String(allow_none=True)
    urls_expire_at = fields.Integer(metadata={"description": "Unix time the URLs stop working"})
    seq = fields.Integer(metadata={"description": "seq of the carrying message (lists only)"})


class AttachmentPageSchema(Schema):
    items = fields.List(fields.Nested(AttachmentSchema))
    next_cursor = fields.String(allow_none=True)


class AttachmentListQuery(StrictSchema):
    kind = fields.String(validate=validate.OneOf(ATTACHMENT_KINDS))
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)


class DownloadQuery(StrictSchema):
    u = fields.String(required=True, validate=validate.Length(1, 128))
    exp = fields.Integer(required=True)
    sig = fields.String(required=True, validate=validate.Length(1, 100))


# --- retention and privacy (#8, docs/retention.md) --------------------------------------------

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


class RetentionSchema(Schema):
    conversation_id = fields.String()
    retention_seconds = fields.Integer(
        allow_none=True, metadata={"description": "the override; null when inherited"}
    )
    inherited = fields.Boolean()
    effective_seconds = fields.Integer(
        allow_none=True, metadata={"description": "what applies; null keeps forever"}
    )
    grace_seconds = fields.Integer()


class RetentionDefaultsSchema(Schema):
    retention_days = fields.Float(allow_none=True)
    retention_seconds = fields.Integer(allow_none=True)
    grace_seconds = fields.Integer()
    interval_seconds = fields.Integer()


class EraseSchema(StrictSchema):
    reason = fields.String(validate=validate.Length(1, 500))


class JobSchema(Schema):
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
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    user_id = fields.String(metadata={"description": "export/erase: the user (erased: pseudonym)"})
    conversation_id = fields.String()
    size = fields.Integer(metadata={"description": "export: bytes of the zip"})
    expires_at = fields.DateTime(metadata={"description": "export: deleted after this"})
    download_url = fields.String(metadata={"description": "export: signed, short-lived"})
    download_expires_at = fields.DateTime()
    result = fields.Dict(metadata={"description": "erase: counts of what changed"})


class ExportDownloadQuery(StrictSchema):
    exp = fields.Integer(required=True)
    sig = fields.String(required=True, validate=validate.Length(1, 100))
