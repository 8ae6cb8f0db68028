"""Every frame of `GET /v1/ws`, in one table: what the server sends and what it accepts.

This table is the protocol's single source. `web/live/protocol.py` builds ephemeral frames only
for types listed here and with the fields listed here, and warns about a durable type that is
not; `web/live/session.py` dispatches client frames by `CLIENT_FRAMES` (a handler without an
entry, or an entry without a handler, stops the import) and validates each with its schema; and
`web/live/asyncapi.py` generates `/asyncapi.json` from it. The shapes themselves are marshmallow
schemas, as for the REST API: `message.new` carries the very `MessageSchema` of
`GET /v1/messages/{mid}`.

Server frames are `{"type", "id"?, "data"?}`: `id` on durable events only (the stream id to
resume from), `data` the frame's schema (none for `pong`). Client frames are flat JSON objects,
`{"type": ..., <fields>}`; fields a frame does not define are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from web.schemas.messages import MessageSchema
from web.schemas.notifications import NotificationSchema

ID_CHARS = 64  # ids clients send (conversation ids, stream ids) are at most this long
_ID = validate.Length(1, ID_CHARS)


# --- server → client: the `data` of each frame -----------------------------------------------


class MessageDeletedSchema(Schema):
    conversation_id = fields.String(required=True)
    message_id = fields.String(required=True)
    seq = fields.Integer(required=True)


class ReactionEventSchema(Schema):
    conversation_id = fields.String(required=True)
    message_id = fields.String(required=True)
    user_id = fields.String(required=True)
    emoji = fields.String(required=True)
    action = fields.String(required=True, validate=validate.OneOf(("added", "removed")))


class ReceiptSchema(Schema):
    conversation_id = fields.String(required=True)
    user_id = fields.String(required=True, metadata={"description": "the member who read"})
    read_seq = fields.Integer(required=True, metadata={"description": "read up to this seq"})


class ConversationUpdatedSchema(Schema):
    conversation_id = fields.String(required=True)
    change = fields.String(
        required=True,
        metadata={
            "description": "what changed (updated, members, deleted, retention, history, and "
            "possibly more): refetch the conversation"
        },
    )
    hidden_through_seq = fields.Integer(
        metadata={"description": "retention hid the messages up to this seq: drop them"}
    )


class AttachmentReadySchema(Schema):
    attachment_id = fields.String(required=True)
    conversation_id = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(("ready", "rejected")))
    reason = fields.String(metadata={"description": "why it was rejected"})


class TypingSchema(Schema):
    conversation_id = fields.String(required=True)
    user_id = fields.String(required=True)
    expires_in = fields.Float(
        required=True,
        metadata={
            "description": "hide the indicator after this many seconds unless another "
            "typing frame arrives"
        },
    )


class PresenceSchema(Schema):
    user_id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(("online", "offline")))


class ResyncSchema(Schema):
    reason = fields.String(
        required=True,
        metadata={"description": "starts with trimmed, unknown id or malformed id"},
    )
    oldest = fields.String(
        required=True, allow_none=True, metadata={"description": "the first id still kept"}
    )
    latest = fields.String(required=True, metadata={"description": "the current end"})


class ErrorSchema(Schema):
    detail = fields.String(required=True)


@dataclass(frozen=True)
class ServerFrame:
    """A frame the server sends. `durable` frames are stream events and carry `id`."""

    name: str  # the frame's "type"
    summary: str
    data: type[Schema] | None
    durable: bool = False
    data_fields: frozenset[str] = field(init=False)  # the names `data` may have
    data_required: frozenset[str] = field(init=False)  # and those it must have

    def __post_init__(self) -> None:
        declared: dict[str, fields.Field[Any]] = self.data().fields if self.data else {}
        object.__setattr__(self, "data_fields", frozenset(declared))
        required = frozenset(n for n, f in declared.items() if f.required)
        object.__setattr__(self, "data_required", required)


SERVER_FRAMES: dict[str, ServerFrame] = {
    f.name: f
    for f in (
        ServerFrame(
            "message.new",
            "A message was delivered: the full message as GET /v1/messages/{mid} renders it for "
            "this user (recipients see masked text; the sender also sees status, moderation "
            "and client_msg_id).",
            MessageSchema,
            durable=True,
        ),
        ServerFrame(
            "message.updated",
            "A message changed (edited, pinned, moderated): the full message as above. A "
            "message held or rejected by moderation reaches only its sender and moderators.",
            MessageSchema,
            durable=True,
        ),
        ServerFrame("message.deleted", "A message was deleted.", MessageDeletedSchema, True),
        ServerFrame("reaction", "A reaction was added or removed.", ReactionEventSchema, True),
        ServerFrame("receipt", "Another member read up to read_seq.", ReceiptSchema, durable=True),
        ServerFrame(
            "conversation.updated",
            "A conversation changed: refetch it.",
            ConversationUpdatedSchema,
            durable=True,
        ),
        ServerFrame(
            "attachment.ready",
            "An upload of yours was processed: ready to attach, or rejected.",
            AttachmentReadySchema,
            durable=True,
        ),
        ServerFrame(
            "notification",
            "An in-app notification was created or changed (as in GET /v1/notifications).",
            NotificationSchema,
            durable=True,
        ),
        ServerFrame("typing", "Another member is typing in a conversation (no id).", TypingSchema),
        ServerFrame(
            "presence",
            "A member of one of your conversations (of at most PARLEY_WS_PRESENCE_FANOUT_MAX "
            "members) came online anywhere or went offline everywhere (no id).",
            PresenceSchema,
        ),
        ServerFrame(
            "resync",
            "The stream cannot resume from the id given without a gap: refetch over REST, "
            "keep the next event's id. The socket continues live from now.",
            ResyncSchema,
        ),
        ServerFrame(
            "error",
            "A client frame was malformed, unknown or refused; the socket stays open.",
            ErrorSchema,
        ),
        ServerFrame("pong", "The answer to ping.", None),
    )
}


# --- client → server: each frame's fields besides `type` -------------------------------------


class ClientFrameSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # `type`, and fields of later versions of the protocol


class StrictInteger(fields.Integer):
    """An integer in the JSON sense: not 1.5, not "1", not true."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class AuthFrameSchema(ClientFrameSchema):
    token = fields.String(
        required=True,
        validate=validate.Length(min=1),
        metadata={"description": "a user JWT (an API key is refused: live events are per user)"},
    )
    since = fields.String(
        validate=_ID,
        metadata={"description": "first frame only: replay the events after this id"},
    )


class ResumeFrameSchema(ClientFrameSchema):
    since = fields.String(
        required=True, validate=_ID, metadata={"description": "the last id you processed"}
    )


class TypingFrameSchema(ClientFrameSchema):
    conversation_id = fields.String(required=True, validate=_ID)


class ReadFrameSchema(ClientFrameSchema):
    conversation_id = fields.String(required=True, validate=_ID)
    seq = StrictInteger(required=True, validate=validate.Range(min=0))


class PingFrameSchema(ClientFrameSchema):
    pass


@dataclass(frozen=True)
class ClientFrame:
    """A frame the server accepts; `reply` names the server frame that answers it, if any."""

    name: str  # the frame's "type"
    summary: str
    schema: type[ClientFrameSchema]
    reply: str | None = None


CLIENT_FRAMES: dict[str, ClientFrame] = {
    f.name: f
    for f in (
        ClientFrame(
            "auth",
            "As the first frame (when the request had no token): authenticate, within "
            "PARLEY_WS_AUTH_TIMEOUT_S, or the socket closes with 4401. Later: renew the token "
            "(same user) to push back the 4001 close at its expiry.",
            AuthFrameSchema,
        ),
        ClientFrame(
            "resume",
            "Restart the stream after since: queued frames not yet written are dropped and "
            "everything after since is replayed (or resync is sent).",
            ResumeFrameSchema,
        ),
        ClientFrame(
            "typing",
            "Tell the conversation's other members you are typing (participants only; at most "
            "one per conversation every PARLEY_WS_TYPING_INTERVAL_S, extra ones are dropped).",
            TypingFrameSchema,
        ),
        ClientFrame(
            "read",
            "Move your read cursor as POST /v1/conversations/{cid}/read does; the other "
            "members get a receipt. Refusals come back as error.",
            ReadFrameSchema,
        ),
        ClientFrame("ping", "Answered with pong.", PingFrameSchema, reply="pong"),
    )
}

_LOADERS = {t: f.schema() for t, f in CLIENT_FRAMES.items()}


def load_client_frame(msg: dict[str, Any]) -> dict[str, Any] | str:
    """A client frame of a known type, validated by its schema (fields besides `type`), or
    what is wrong with it."""
    loader = _LOADERS.get(msg["type"])
    if loader is None:
        return f"unknown frame type {msg['type'][:40]!r}; expected one of " + ", ".join(
            sorted(CLIENT_FRAMES)
        )
    try:
        loaded: dict[str, Any] = loader.load(msg)
    except ValidationError as exc:
        return f"invalid {msg['type']} frame: {_explain(exc.messages)}"
    return loaded


def _explain(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {_explain(v)}" for k, v in messages.items())
    if isinstance(messages, list):
        return " ".join(str(m) for m in messages)
    return str(messages)
