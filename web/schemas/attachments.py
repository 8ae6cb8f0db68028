"""Attachments: the upload form, the media list, signed downloads; the attachment shapes."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from models import ATTACHMENT_KINDS, ATTACHMENT_STATES
from web.schemas.common import ResponseSchema, StrictSchema, Timestamp


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


class AttachmentListQuery(StrictSchema):
    kind = fields.String(validate=validate.OneOf(ATTACHMENT_KINDS))
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)


class DownloadQuery(StrictSchema):
    u = fields.String(required=True, validate=validate.Length(1, 128))
    exp = fields.Integer(required=True)
    sig = fields.String(required=True, validate=validate.Length(1, 100))


class AttachmentVariantSchema(ResponseSchema):
    content_type = fields.String()
    size = fields.Integer()
    width = fields.Integer()
    height = fields.Integer()
    url = fields.String(metadata={"description": "signed download URL, bound to the caller"})


class AttachmentEmbedSchema(ResponseSchema):
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
    created_at = Timestamp()


class AttachmentSchema(AttachmentEmbedSchema):
    conversation_id = fields.String()
    message_id = fields.String(allow_none=True)
    urls_expire_at = fields.Integer(metadata={"description": "Unix time the URLs stop working"})
    seq = fields.Integer(metadata={"description": "seq of the carrying message (lists only)"})


class AttachmentPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(AttachmentSchema))
    next_cursor = fields.String(allow_none=True)
