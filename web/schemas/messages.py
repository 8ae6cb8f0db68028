"""Messages: post, list, edit, report, read; the message shape (REST and `message.new`)."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from models import MESSAGE_STATES, MESSAGE_TYPES
from web.schemas.attachments import AttachmentEmbedSchema
from web.schemas.common import ResponseSchema, StrictSchema, Timestamp, small_json


class MessageCreateSchema(StrictSchema):
    text = fields.String(allow_none=True)
    client_msg_id = fields.String(validate=validate.Length(1, 128))
    type = fields.String(load_default="text", validate=validate.OneOf(MESSAGE_TYPES))
    reply_to = fields.String(allow_none=True, validate=validate.Length(1, 26))
    attachments = fields.List(
        fields.String(validate=validate.Length(1, 40)), validate=validate.Length(max=10)
    )
    metadata = fields.Dict(keys=fields.String(), validate=small_json)


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


# --- responses (the shapes domain/render.py produces) ----------------------------------------


class ModerationSchema(ResponseSchema):
    action = fields.String(validate=validate.OneOf(("allow", "mask", "hold", "reject")))
    labels = fields.List(fields.String())
    reason = fields.String()


class ReactionSummarySchema(ResponseSchema):
    emoji = fields.String()
    count = fields.Integer()
    me = fields.Boolean()


class MessageSchema(ResponseSchema):
    id = fields.String()
    conversation_id = fields.String()
    seq = fields.Integer()
    sender_id = fields.String(allow_none=True)
    type = fields.String(validate=validate.OneOf(MESSAGE_TYPES))
    text = fields.String(allow_none=True)
    state = fields.String(validate=validate.OneOf(MESSAGE_STATES))
    created_at = Timestamp()
    edited_at = Timestamp(allow_none=True)
    deleted = fields.Boolean()
    reply_to = fields.String(allow_none=True)
    attachments = fields.List(fields.Nested(AttachmentEmbedSchema))
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


class MessagePageSchema(ResponseSchema):
    items = fields.List(fields.Nested(MessageSchema))
    next_cursor = fields.String(allow_none=True)


class ReadStateSchema(ResponseSchema):
    conversation_id = fields.String()
    read_seq = fields.Integer()
    unread_count = fields.Integer()


class ReportSchema(ResponseSchema):
    id = fields.String()
    message_id = fields.String()
    reason = fields.String()
    created_at = Timestamp()
