"""Push (/v1/push): subscriptions, preview preferences, the VAPID key, dead letters.

The subscription body is the browser's own PushSubscription JSON plus a `kind`
(docs/api.md, stable), so `expirationTime` is accepted; the keys are checked to be a real P-256
point and a 16-byte auth secret, because a bad key would only fail later, in the worker, as a
dead letter.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from marshmallow import ValidationError, fields, validate, validates_schema

from models import PREVIEW_MODES, SUBSCRIPTION_KINDS
from web.schemas.common import ResponseSchema, StrictSchema, Timestamp

KIND_FIELDS = {"webpush": {"endpoint", "keys"}, "webhook": {"url"}, "email": {"address"}}
OPTIONAL_FIELDS = {"webpush": {"expirationTime"}, "webhook": set(), "email": set()}


def _b64(value: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("must be base64url") from exc


def _p256dh(value: str) -> None:
    raw = _b64(value)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise ValidationError("must be an uncompressed P-256 public key (65 bytes)") from exc
    if len(raw) != 65:
        raise ValidationError("must be an uncompressed P-256 public key (65 bytes)")


def _auth(value: str) -> None:
    if len(_b64(value)) != 16:
        raise ValidationError("must be a 16-byte auth secret, base64url")


class PushKeysSchema(StrictSchema):
    p256dh = fields.String(required=True, validate=[validate.Length(1, 200), _p256dh])
    auth = fields.String(required=True, validate=[validate.Length(1, 100), _auth])


class PushSubscriptionCreateSchema(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(SUBSCRIPTION_KINDS))
    endpoint = fields.String(validate=validate.Length(1, 2048))
    keys = fields.Nested(PushKeysSchema)
    expirationTime = fields.Float(allow_none=True)  # the browser's own field name
    url = fields.String(validate=validate.Length(1, 2048))
    address = fields.String(validate=validate.Length(3, 254))

    @validates_schema
    def _fields_for_kind(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("kind")
        if kind not in KIND_FIELDS:
            return
        errors: dict[str, list[str]] = {}
        for name in sorted(KIND_FIELDS[kind] - data.keys()):
            errors[name] = [f"required for kind {kind}"]
        extra = data.keys() - KIND_FIELDS[kind] - OPTIONAL_FIELDS[kind] - {"kind"}
        for name in sorted(extra):
            errors[name] = [f"not used by kind {kind}"]
        if errors:
            raise ValidationError(errors)


class PushSubscriptionSchema(ResponseSchema):
    id = fields.String()
    kind = fields.String(validate=validate.OneOf(SUBSCRIPTION_KINDS))
    endpoint = fields.String(metadata={"description": "webpush"})
    url = fields.String(metadata={"description": "webhook"})
    address = fields.String(metadata={"description": "email"})
    created_at = Timestamp()
    last_success_at = Timestamp(allow_none=True)
    verified = fields.Boolean(
        metadata={
            "description": "e-mail: false until the code mailed to the address is entered "
            "(POST .../verify); nothing else is mailed before that"
        }
    )
    secret = fields.String(
        metadata={"description": "webhook only, in the creation response only: sign checks"}
    )


class EmailCodeSchema(StrictSchema):
    code = fields.String(
        required=True,
        validate=validate.Length(min=1, max=32),
        metadata={"description": "the code from the confirmation mail (dashes optional)"},
    )


class PushSubscriptionListSchema(ResponseSchema):
    items = fields.List(fields.Nested(PushSubscriptionSchema))


class VapidKeySchema(ResponseSchema):
    public_key = fields.String(metadata={"description": "applicationServerKey, base64url"})


class PushPreferencesSchema(ResponseSchema):
    preview = fields.String(allow_none=True, validate=validate.OneOf(PREVIEW_MODES))
    server_preview = fields.String(validate=validate.OneOf(PREVIEW_MODES))
    effective_preview = fields.String(validate=validate.OneOf(PREVIEW_MODES))


class PushPreferencesPatchSchema(StrictSchema):
    preview = fields.String(required=True, allow_none=True, validate=validate.OneOf(PREVIEW_MODES))


class DeadLetterSchema(ResponseSchema):
    id = fields.String()
    user_id = fields.String()
    target = fields.String(metadata={"description": "subscription id, or 'platform'"})
    kind = fields.String()
    purpose = fields.String(validate=validate.OneOf(("notify", "retract")))
    notification_id = fields.String(allow_none=True)
    conversation_id = fields.String(allow_none=True)
    message_id = fields.String(allow_none=True)
    attempts = fields.Integer()
    last_status = fields.Integer(allow_none=True)
    reason = fields.String(allow_none=True)
    created_at = Timestamp()
    failed_at = Timestamp()


class DeadLetterPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(DeadLetterSchema))
    next_cursor = fields.String(allow_none=True)
