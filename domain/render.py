"""Public JSON shapes of conversations and messages, as docs/api.md fixes them.

Decryption happens here, at the edge, per viewer: recipients get text as moderation left it
(masked spans), while the sender and moderators get the original with the `moderation` object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.crypto import MissingKeyError
from core.ids import iso
from core.services import Services
from domain.attachments import for_message
from domain.keys import message_aad
from domain.principals import Principal
from models import Conversation, Message, Participant

PREVIEW_CHARS = 120


def mask(text: str, spans: Iterable[Sequence[Any]]) -> str:
    """Star out the stored spans (only those the policy masks are stored), keeping spaces."""
    chars = list(text)
    for start, end, *_ in spans:
        for i in range(max(0, start), min(len(chars), end)):
            if not chars[i].isspace():
                chars[i] = "*"
    return "".join(chars)


def message_text(svc: Services, msg: Message, privileged: bool) -> str | None:
    if msg.deleted_at is not None or msg.expired_at is not None:
        return None
    if msg.text_ct is None or msg.key_id is None:
        return None
    try:
        text = svc.keyring.open_text(msg.key_id, msg.text_ct, message_aad(msg.id))
    except MissingKeyError:  # its conversation was deleted (key shredded): the text is gone
        return None
    if not privileged and msg.moderation_action == "mask" and msg.moderation_spans:
        text = mask(text, msg.moderation_spans)
    return text


def sender_status(msg: Message, members: Sequence[Participant]) -> str:
    """sent / delivered / seen for the sender, from the other members' cursors."""
    if msg.state != "delivered":
        return "sent"
    sender, seq = msg.sender_id, msg.seq  # read once: members can be 1,000 (the live hub)
    others = [p for p in members if p.user_id != sender and p.left_at is None]
    if not others:
        return "sent"
    if all(p.read_seq >= seq for p in others):
        return "seen"
    if all(p.delivered_seq >= seq for p in others):
        return "delivered"
    return "sent"


def render_message(
    svc: Services,
    msg: Message,
    who: Principal,
    part: Participant | None,
    members: Sequence[Participant],
    reactions: Mapping[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    is_sender = msg.sender_id is not None and msg.sender_id == who.user_id
    privileged = is_sender or who.is_moderator or (part is not None and part.role == "moderator")
    out: dict[str, Any] = {
        "id": msg.id,
        "conversation_id": msg.conversation_id,
        "seq": msg.seq,
        "sender_id": msg.sender_id,
        "type": msg.type,
        "text": message_text(svc, msg, privileged),
        "state": msg.state,
        "created_at": iso(msg.created_at),
        "edited_at": iso(msg.edited_at),
        "deleted": msg.deleted_at is not None,
        "reply_to": msg.reply_to_id,
        "attachments": [] if msg.deleted_at is not None else for_message(svc, msg),
        "reactions": reactions.get(msg.id, []),
        "pinned": msg.pinned_at is not None,
        "metadata": msg.meta or {},
    }
    if msg.client_msg_id and is_sender:
        out["client_msg_id"] = msg.client_msg_id
    if privileged:
        out["moderation"] = (
            {"action": msg.moderation_action, "labels": list(msg.moderation_labels or [])}
            if msg.moderation_action
            else None
        )
        if msg.moderation_reason and msg.state in ("held", "rejected"):
            out["moderation"]["reason"] = msg.moderation_reason
    if is_sender:
        out["status"] = sender_status(msg, members)
    return out


def render_conversation(
    conv: Conversation,
    me: Participant | None = None,
    unread: int | None = None,
    last_message: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": conv.id,
        "type": conv.type,
        "members": [
            {"user_id": p.user_id, "role": p.role, "joined_at": iso(p.joined_at)}
            for p in conv.active_participants()
        ],
        "subject": conv.subject,
        "context": (
            {"type": conv.context_type, "id": conv.context_id}
            if conv.context_type is not None
            else None
        ),
        "status": conv.status,
        "metadata": conv.meta or {},
        "created_at": iso(conv.created_at),
        "last_activity_at": iso(conv.last_activity_at),
        "last_seq": conv.last_seq,
    }
    if me is not None:
        out["unread_count"] = unread or 0
        out["last_message"] = last_message
        out["me"] = {
            "role": me.role,
            "read_seq": me.read_seq,
            "delivered_seq": me.delivered_seq,
            "archived": me.archived,
            "muted_until": iso(me.muted_until),
            "notification_level": me.notification_level,
        }
    return out


def preview(svc: Services, msg: Message | None) -> dict[str, Any] | None:
    """The conversation list's last-message preview: what a recipient would see, shortened."""
    if msg is None or msg.expired_at is not None:  # hidden by retention: no preview
        return None
    text = message_text(svc, msg, privileged=False)
    if text is not None and len(text) > PREVIEW_CHARS:
        text = text[: PREVIEW_CHARS - 1] + "…"
    return {
        "id": msg.id,
        "seq": msg.seq,
        "sender_id": msg.sender_id,
        "type": msg.type,
        "text": text,
        "deleted": msg.deleted_at is not None,
        "created_at": iso(msg.created_at),
    }
