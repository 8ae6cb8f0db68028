"""In-app notifications (/v1/notifications): list, read one, read all; the notification shape
(REST and the `notification` frame)."""

from __future__ import annotations

from marshmallow import fields, validate

from web.schemas.common import PageQuery, ResponseSchema, StrictSchema, Timestamp


class NotificationListQuery(PageQuery):
    unread = fields.Boolean(load_default=False)


class NotificationSchema(ResponseSchema):
    id = fields.String()
    kind = fields.String()
    conversation_id = fields.String(allow_none=True)
    message_id = fields.String(allow_none=True)
    seq = fields.Integer(allow_none=True)
    sender_id = fields.String(allow_none=True)
    count = fields.Integer(metadata={"description": "unread messages it stands for"})
    created_at = Timestamp()
    read = fields.Boolean()
    read_at = Timestamp(allow_none=True)


class NotificationPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(NotificationSchema))
    next_cursor = fields.String(allow_none=True)
    unread_count = fields.Integer()


class ReadAllSchema(StrictSchema):
    conversation_id = fields.String(validate=validate.Length(1, 26))


class ReadAllResultSchema(ResponseSchema):
    updated = fields.Integer()
