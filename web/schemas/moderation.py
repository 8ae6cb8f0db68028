"""Moderation: the review queue, verdicts, mutes and bans, the audit log."""

from __future__ import annotations

from marshmallow import fields, validate

from domain.review import QUEUE_KINDS
from web.schemas.common import ResponseSchema, StrictSchema, Timestamp
from web.schemas.messages import MessageSchema


class QueueQuery(StrictSchema):
    """The queue's filter: `kind` narrows it; without one, every kind is listed."""

    kind = fields.String(
        validate=validate.OneOf(QUEUE_KINDS),
        metadata={
            "description": (
                "Only one kind of waiting message: `held` (held by policy, flood or reports; "
                "not delivered), `reported` (open reports, delivered or held), `flagged` "
                "(delivered with something masked). Omitted: everything waiting, every kind, "
                "each message once, oldest first; `cursor` pages across the kinds."
            )
        },
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


class ModerationUserSchema(ResponseSchema):
    user_id = fields.String()
    muted_until = Timestamp(allow_none=True)
    banned = fields.Boolean()


class QueueItemSchema(MessageSchema):
    open_reports = fields.Integer()


class QueuePageSchema(ResponseSchema):
    items = fields.List(fields.Nested(QueueItemSchema))
    next_cursor = fields.String(allow_none=True)


class AuditQuery(StrictSchema):
    actor = fields.String(validate=validate.Length(1, 160))
    action = fields.String(validate=validate.Length(1, 64))
    target_type = fields.String(validate=validate.Length(1, 32))
    target_id = fields.String(validate=validate.Length(1, 128))
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)


class AuditEntrySchema(ResponseSchema):
    id = fields.Integer()
    actor = fields.String()
    action = fields.String()
    target_type = fields.String()
    target_id = fields.String()
    reason = fields.String(allow_none=True)
    detail = fields.Dict()
    created_at = Timestamp()


class AuditPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(AuditEntrySchema))
    next_cursor = fields.String(allow_none=True)
