"""The public JSON shape of an attachment, alone or embedded in a message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, object_session

from core.ids import iso
from core.services import Services
from domain.attachments.downloads import DownloadLinks
from domain.attachments.stored import filename
from models import MEDIA_TYPES, Attachment, Message


def embedded(svc: Services, att: Attachment) -> dict[str, Any]:
    """An attachment as a message carries it. The message shape is the same for every viewer
    (the live socket renders it once for many), so it holds no URLs."""
    out: dict[str, Any] = {
        "id": att.id,
        "state": att.state,
        "kind": att.kind,
        "content_type": att.content_type,
        "filename": filename(svc, att),
        "size": att.size,
        "width": att.width,
        "height": att.height,
        "variants": {name: dict(meta) for name, meta in sorted((att.variants or {}).items())},
        "created_at": iso(att.created_at),
    }
    if att.state == "rejected":
        out["reason"] = att.reason
    return out


def view(
    svc: Services, att: Attachment, *, links: DownloadLinks | None = None, seq: int | None = None
) -> dict[str, Any]:
    """An attachment on its own (upload, GET, the media list): the embedded shape, where it
    belongs, and with `links`, signed download URLs for their user. `seq` is the carrying
    message's, for the media list."""
    out = {
        **embedded(svc, att),
        "conversation_id": att.conversation_id,
        "message_id": att.message_id,
    }
    if links is not None and att.state == "ready":
        for name, meta in out["variants"].items():
            meta["url"] = links.url(att.id, name)
        out["urls_expire_at"] = links.expires
    if seq is not None:
        out["seq"] = seq
    return out


_OF_MESSAGES = (  # built once: the live hub runs it for every round it renders
    select(Attachment)
    .where(Attachment.message_id.in_(bindparam("ids", expanding=True)))
    .order_by(Attachment.id)
)
_CACHE = "parley_attachments"  # session.info: message id → its attachments, loaded or known


def remember_for_message(session: Session, message_id: str, rows: Sequence[Attachment]) -> None:
    """The message's attachments are known (just attached): rendering it needs no query."""
    cache: dict[str, Sequence[Attachment]] = session.info.setdefault(_CACHE, {})
    cache[message_id] = rows


def for_message(svc: Services, msg: Message) -> list[dict[str, Any]]:
    """Attachments of a message, as embedded in it (no URLs: the message shape is the same
    for every viewer; URLs come from GET /v1/attachments/{id}).

    Loads attachments for every message of the same session in one query, so rendering a
    page of messages costs one query, not one per message. Only media messages carry any
    (domain/messages._check_content): a text message, what the live hub renders most, costs
    no query at all."""
    if msg.type not in MEDIA_TYPES:
        return []
    session = object_session(msg)
    if session is None:
        with svc.ReadSession() as s:
            rows = s.scalars(
                select(Attachment).where(Attachment.message_id == msg.id).order_by(Attachment.id)
            ).all()
            return [embedded(svc, a) for a in rows]
    cache: dict[str, Sequence[Attachment]] = session.info.setdefault(_CACHE, {})
    if msg.id not in cache:
        ids = {
            obj.id
            for obj in list(session.identity_map.values())
            if isinstance(obj, Message) and obj.type in MEDIA_TYPES and obj.id not in cache
        } | {msg.id}
        found: dict[str, list[Attachment]] = {i: [] for i in ids}
        for att in session.scalars(_OF_MESSAGES, {"ids": list(ids)}):
            found[att.message_id or ""].append(att)
        cache.update(found)
    return [embedded(svc, a) for a in cache[msg.id]]
