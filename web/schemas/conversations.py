"""Conversations: create, list, change, members and my settings; the conversation shape."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from models import CONVERSATION_STATUSES, CONVERSATION_TYPES, NOTIFICATION_LEVELS, PARTICIPANT_ROLES
from web.schemas.common import ResponseSchema, StrictSchema, Timestamp, small_json


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
    metadata = fields.Dict(keys=fields.String(), validate=small_json)


class ConversationPatchSchema(StrictSchema):
    subject = fields.String(allow_none=True, validate=validate.Length(max=200))
    status = fields.String(validate=validate.OneOf(CONVERSATION_STATUSES))
    metadata = fields.Dict(keys=fields.String(), validate=small_json)

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


# --- responses (the shapes domain/render.py produces) ----------------------------------------


class MemberSchema(ResponseSchema):
    user_id = fields.String()
    role = fields.String(validate=validate.OneOf(PARTICIPANT_ROLES))
    joined_at = Timestamp()


class MyMembershipSchema(ResponseSchema):
    role = fields.String()
    read_seq = fields.Integer()
    delivered_seq = fields.Integer()
    archived = fields.Boolean()
    muted_until = Timestamp(allow_none=True)
    notification_level = fields.String()


class PreviewSchema(ResponseSchema):
    id = fields.String()
    seq = fields.Integer()
    sender_id = fields.String(allow_none=True)
    type = fields.String()
    text = fields.String(allow_none=True)
    deleted = fields.Boolean()
    created_at = Timestamp()


class ConversationSchema(ResponseSchema):
    id = fields.String()
    type = fields.String(validate=validate.OneOf(CONVERSATION_TYPES))
    members = fields.List(fields.Nested(MemberSchema))
    subject = fields.String(allow_none=True)
    context = fields.Nested(ContextSchema, allow_none=True)
    status = fields.String(validate=validate.OneOf(CONVERSATION_STATUSES))
    metadata = fields.Dict()
    created_at = Timestamp()
    last_activity_at = Timestamp()
    last_seq = fields.Integer()
    unread_count = fields.Integer()
    last_message = fields.Nested(PreviewSchema, allow_none=True)
    me = fields.Nested(MyMembershipSchema)


class ConversationPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(ConversationSchema))
    next_cursor = fields.String(allow_none=True)


class UnreadTotalsSchema(ResponseSchema):
    total = fields.Integer()
    conversations = fields.Integer()
