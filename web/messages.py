"""Messages: post, list, get, edit, delete, pin, reactions, reports and the read cursor."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from core.services import services
from domain import ingest, review
from domain import message_actions as actions
from domain import messages as msgs
from domain.conversations import unread_counts
from domain.render import render_message
from models import Message
from web.auth import current, require_auth
from web.http import doc, json_body, query_args
from web.limits import limits
from web.schemas.messages import (
    MessageCreateSchema,
    MessageListQuery,
    MessagePageSchema,
    MessagePatchSchema,
    MessageSchema,
    ReadSchema,
    ReadStateSchema,
    ReportCreateSchema,
    ReportSchema,
)

bp = Blueprint("messages", __name__, url_prefix="/v1")
bp.before_request(require_auth)


def _render(session: Any, msg: Message, *, fresh: bool = False) -> dict[str, Any]:
    """`fresh`: just posted, so no reactions and status "sent" — skip both lookups."""
    who = current()
    if fresh:
        return render_message(services(), msg, who, None, [], {})
    members = msgs.members_of(session, msg.conversation_id)
    part = next((p for p in members if p.user_id == who.user_id), None)
    reactions = actions.reactions_for(session, [msg.id], who.user_id)
    return render_message(services(), msg, who, part, members, reactions)


@bp.post("/conversations/<cid>/messages")
@doc(
    "Post a message (202: accepted for delivery)",
    body=MessageCreateSchema,
    responses={202: MessageSchema, 200: MessageSchema},
    tag="messages",
)
@limits("post")
def post_message(cid: str) -> tuple[dict[str, Any], int]:
    """Queue a message for delivery; the same client_msg_id returns the first message again."""
    body = json_body(MessageCreateSchema)
    svc = services()
    if body.get("attachments"):  # claimed with the message: one ORM transaction of its own
        with svc.Session.begin() as s:
            msg, created = msgs.post(svc, s, current(), cid, body)
            return _render(s, msg, fresh=created), 202 if created else 200
    posted = ingest.post(svc, current(), cid, body)  # group commit with concurrent POSTs
    if posted.answer is not None:
        return posted.answer, 202
    with svc.ReadSession() as s:  # the same client_msg_id again: the first message
        msg, _, _ = msgs.get_visible(s, current(), posted.message_id)
        return _render(s, msg), 200


@bp.get("/conversations/<cid>/messages")
@doc(
    "List messages in seq order",
    query=MessageListQuery,
    responses={200: MessagePageSchema},
    tag="messages",
)
def list_messages(cid: str) -> dict[str, Any]:
    """Page through messages by seq (after_seq forwards, before_seq backwards, or a cursor)."""
    q = query_args(MessageListQuery())
    svc = services()
    who = current()
    with svc.Session.begin() as s:  # a write: fetching moves the reader's delivered cursor
        _, part, rows, next_cursor = msgs.list_page(
            s,
            who,
            cid,
            after_seq=q.get("after_seq"),
            before_seq=q.get("before_seq"),
            cursor=q.get("cursor"),
            limit=q["limit"],
            query=q,
        )
        members = msgs.members_of(s, cid)
        reactions = actions.reactions_for(s, [m.id for m in rows], who.user_id)
        items = [render_message(svc, m, who, part, members, reactions) for m in rows]
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/messages/<mid>")
@doc("Get a message", responses={200: MessageSchema}, tag="messages")
def get_message(mid: str) -> dict[str, Any]:
    """Get one message the caller may see."""
    with services().ReadSession() as s:
        msg, _, _ = msgs.get_visible(s, current(), mid)
        return _render(s, msg)


@bp.patch("/messages/<mid>")
@doc(
    "Edit a message (sender only, within the edit window)",
    body=MessagePatchSchema,
    responses={200: MessageSchema},
    tag="messages",
)
def edit_message(mid: str) -> dict[str, Any]:
    """Edit the text; the previous version is kept (encrypted) in the edit history."""
    body = json_body(MessagePatchSchema())
    svc = services()
    with svc.Session.begin() as s:
        msg = msgs.edit(svc, s, current(), mid, body["text"])
        return _render(s, msg)


@bp.delete("/messages/<mid>")
@doc("Delete a message (sender only; soft delete)", responses={200: MessageSchema}, tag="messages")
def delete_message(mid: str) -> dict[str, Any]:
    """Soft-delete: the message stays as a tombstone with no text."""
    with services().Session.begin() as s:
        msg = msgs.soft_delete(s, current(), mid)
        return _render(s, msg)


@bp.put("/messages/<mid>/pin")
@doc("Pin a message", responses={200: MessageSchema}, tag="messages")
def pin(mid: str) -> dict[str, Any]:
    """Pin (owners, admins and moderators of the conversation)."""
    with services().Session.begin() as s:
        return _render(s, actions.set_pinned(s, current(), mid, True))


@bp.delete("/messages/<mid>/pin")
@doc("Unpin a message", responses={200: MessageSchema}, tag="messages")
def unpin(mid: str) -> dict[str, Any]:
    """Unpin (owners, admins and moderators of the conversation)."""
    with services().Session.begin() as s:
        return _render(s, actions.set_pinned(s, current(), mid, False))


REACTION = (
    "One emoji, percent-encoded in the path: 👍 (%F0%9F%91%8D), or a sequence such as 👍🏽"
    " (skin tone), 👨\u200d👩\u200d👧 (joined with ZWJ), 🇫🇷 or 1️⃣. Words, shortcodes and two"
    " emoji are refused with 422."
)


@bp.put("/messages/<mid>/reactions/<emoji>")
@doc("Add my reaction", path={"emoji": REACTION}, responses={200: MessageSchema}, tag="messages")
def add_reaction(mid: str, emoji: str) -> dict[str, Any]:
    """Add the caller's reaction (idempotent)."""
    with services().Session.begin() as s:
        return _render(s, actions.react(s, current(), mid, emoji, True))


@bp.delete("/messages/<mid>/reactions/<emoji>")
@doc(
    "Remove my reaction",
    path={
        "emoji": "The reaction to remove: an emoji, or the text of one stored before reactions"
        " had to be emoji (1-32 characters)."
    },
    responses={200: MessageSchema},
    tag="messages",
)
def remove_reaction(mid: str, emoji: str) -> dict[str, Any]:
    """Remove the caller's reaction (idempotent)."""
    with services().Session.begin() as s:
        return _render(s, actions.react(s, current(), mid, emoji, False))


@bp.post("/messages/<mid>/reports")
@doc(
    "Report a message to the moderators",
    body=ReportCreateSchema,
    responses={201: ReportSchema, 200: ReportSchema},
    tag="messages",
)
def report_message(mid: str) -> tuple[dict[str, Any], int]:
    """Report a message; reporting the same message twice returns the first report."""
    body = json_body(ReportCreateSchema())
    svc = services()
    with svc.Session.begin() as s:
        row, created = actions.report(s, current(), mid, body["reason"], body.get("note"))
        if created:
            msg, _, _ = msgs.get_visible(s, current(), mid)
            review.hold_after_reports(s, msg, svc.settings.reports_auto_hold)
        out = {
            "id": row.id,
            "message_id": row.message_id,
            "reason": row.reason,
            "created_at": row.created_at,
        }
        return out, 201 if created else 200


@bp.post("/conversations/<cid>/read")
@doc(
    "Move my read cursor forward", body=ReadSchema, responses={200: ReadStateSchema}, tag="messages"
)
def mark_read(cid: str) -> dict[str, Any]:
    """Mark messages up to seq as read; the cursor never moves back."""
    body = json_body(ReadSchema())
    who = current()
    with services().Session.begin() as s:
        part = actions.mark_read(s, who, cid, body["seq"])
        s.flush()
        unread = unread_counts(s, part.user_id, [cid]).get(cid, 0)
        return {"conversation_id": cid, "read_seq": part.read_seq, "unread_count": unread}
