"""What an export says: the README and the shape of each record, one JSON object per line.

Apart from how the records are gathered (export.py), so the export's format reads in one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from core.ids import iso
from models import (
    Attachment,
    Conversation,
    Message,
    Notification,
    Participant,
    PushPreference,
    PushSubscription,
    Reaction,
    Report,
    User,
)

README = """Parley data export
==================

user_id: {user_id}
exported_at: {exported_at}

profile.json            the user record
conversations.jsonl     conversations the user is or was in, with their membership, read and
                        delivered cursors (read receipts) and settings
messages.jsonl          messages the user sent, with their text decrypted and their edit history
reactions.jsonl         reactions the user added
reports.jsonl           reports the user filed
notifications.jsonl     the user's in-app notifications
push_subscriptions.jsonl  where the user asked to be reached
attachments.jsonl       files the user uploaded; the files are under attachments/
"""


def json_line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def profile(user: User, prefs: PushPreference | None) -> bytes:
    out: dict[str, Any] = {
        "user_id": user.id,
        "name": user.name,
        "avatar_url": user.avatar_url,
        "roles": list(user.roles or []),
        "created_at": iso(user.created_at),
        "muted_until": iso(user.muted_until),
        "banned_at": iso(user.banned_at),
    }
    if prefs is not None:
        out["push_preview"] = prefs.preview
    return json.dumps(out, ensure_ascii=False, indent=2).encode()


def conversation(part: Participant, conv: Conversation, members: Sequence[str]) -> bytes:
    return json_line(
        {
            "conversation_id": conv.id,
            "type": conv.type,
            "subject": conv.subject,
            "context": (
                {"type": conv.context_type, "id": conv.context_id} if conv.context_type else None
            ),
            "status": conv.status,
            "created_at": iso(conv.created_at),
            "members": sorted(members),
            "role": part.role,
            "joined_at": iso(part.joined_at),
            "left_at": iso(part.left_at),
            "read_seq": part.read_seq,
            "delivered_seq": part.delivered_seq,
            "muted_until": iso(part.muted_until),
            "notification_level": part.notification_level,
            "archived": part.archived,
        }
    )


def message(
    m: Message,
    text: str | None,
    edits: Sequence[tuple[datetime | None, str | None]],
    attachments: Sequence[str],
) -> bytes:
    """`text` and each edit's text decrypted by the caller (None where the key is gone)."""
    return json_line(
        {
            "id": m.id,
            "conversation_id": m.conversation_id,
            "seq": m.seq,
            "type": m.type,
            "text": text,
            "state": m.state,
            "created_at": iso(m.created_at),
            "edited_at": iso(m.edited_at),
            "deleted_at": iso(m.deleted_at),
            "expired_at": iso(m.expired_at),
            "reply_to": m.reply_to_id,
            "metadata": m.meta or {},
            "moderation": {
                "action": m.moderation_action,
                "labels": list(m.moderation_labels or []),
            },
            "edits": [{"replaced_at": iso(at), "text": t} for at, t in edits],
            "attachments": list(attachments),
        }
    )


def attachment(att: Attachment, name: str | None, path: str | None) -> bytes:
    return json_line(
        {
            "id": att.id,
            "conversation_id": att.conversation_id,
            "message_id": att.message_id,
            "state": att.state,
            "kind": att.kind,
            "content_type": att.content_type,
            "filename": name,
            "size": att.size,
            "created_at": iso(att.created_at),
            "file": path,
        }
    )


def reaction(r: Reaction) -> dict[str, Any]:
    return {"message_id": r.message_id, "emoji": r.emoji, "created_at": iso(r.created_at)}


def report(r: Report) -> dict[str, Any]:
    return {
        "id": r.id,
        "message_id": r.message_id,
        "reason": r.reason,
        "note": r.note,
        "created_at": iso(r.created_at),
        "resolved_at": iso(r.resolved_at),
    }


def notification(n: Notification) -> dict[str, Any]:
    return {
        "id": n.id,
        "kind": n.kind,
        "conversation_id": n.conversation_id,
        "message_id": n.message_id,
        "count": n.count,
        "created_at": iso(n.created_at),
        "read_at": iso(n.read_at),
    }


def subscription(p: PushSubscription) -> dict[str, Any]:
    return {"id": p.id, "kind": p.kind, "target": p.target, "created_at": iso(p.created_at)}
