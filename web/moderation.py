"""Moderation: the review queue, verdicts, mutes and bans, and the audit log."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from core.services import services
from domain import review
from domain.message_actions import reactions_for
from domain.messages import members_of
from domain.render import render_message
from models import AuditEntry, User
from web.auth import current, require_auth
from web.http import doc, json_body, query_args
from web.schemas.messages import MessageSchema
from web.schemas.moderation import (
    ApproveSchema,
    AuditPageSchema,
    AuditQuery,
    BanSchema,
    ModerationUserSchema,
    MuteSchema,
    QueuePageSchema,
    QueueQuery,
    RejectSchema,
)

bp = Blueprint("moderation", __name__, url_prefix="/v1/moderation")
bp.before_request(require_auth)


def _render(session: Any, msg: Any) -> dict[str, Any]:
    who = current()
    members = members_of(session, msg.conversation_id)
    reactions = reactions_for(session, [msg.id], who.user_id)
    return render_message(services(), msg, who, None, members, reactions)


def _user(user: User) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "muted_until": user.muted_until,
        "banned": user.banned_at is not None,
    }


@bp.get("/queue")
@doc(
    "Messages waiting for a moderator",
    query=QueueQuery,
    responses={200: QueuePageSchema},
    tag="moderation",
)
def review_queue() -> dict[str, Any]:
    """List waiting messages (every kind, or one `kind`), oldest first, with open report counts."""
    q = query_args(QueueQuery())
    with services().ReadSession() as s:
        rows, counts, next_cursor = review.queue(
            s, current(), q.get("kind"), q.get("cursor"), q["limit"]
        )
        items = [{**_render(s, m), "open_reports": counts.get(m.id, 0)} for m in rows]
    return {"items": items, "next_cursor": next_cursor}


@bp.post("/messages/<mid>/approve")
@doc(
    "Approve a held message (optionally editing its text)",
    body=ApproveSchema,
    responses={200: MessageSchema},
    tag="moderation",
)
def approve(mid: str) -> dict[str, Any]:
    """Deliver a held message; with `text`, deliver the moderator's edit instead."""
    body = json_body(ApproveSchema())
    svc = services()
    with svc.Session.begin() as s:
        msg = review.approve(svc, s, current(), mid, body.get("reason"), body.get("text"))
        return _render(s, msg)


@bp.post("/messages/<mid>/reject")
@doc(
    "Reject a held or reported message",
    body=RejectSchema,
    responses={200: MessageSchema},
    tag="moderation",
)
def reject(mid: str) -> dict[str, Any]:
    """Reject: the sender is told why; recipients no longer see it."""
    body = json_body(RejectSchema())
    with services().Session.begin() as s:
        return _render(s, review.reject(s, current(), mid, body["reason"]))


@bp.post("/users/<uid>/mute")
@doc(
    "Mute a user for some minutes",
    body=MuteSchema,
    responses={200: ModerationUserSchema},
    tag="moderation",
)
def mute(uid: str) -> dict[str, Any]:
    """Stop a user posting for `minutes`."""
    body = json_body(MuteSchema())
    with services().Session.begin() as s:
        return _user(review.mute(s, current(), uid, body["minutes"], body["reason"]))


@bp.post("/users/<uid>/ban")
@doc("Ban a user", body=BanSchema, responses={200: ModerationUserSchema}, tag="moderation")
def ban(uid: str) -> dict[str, Any]:
    """Stop a user posting until unbanned."""
    body = json_body(BanSchema())
    with services().Session.begin() as s:
        return _user(review.set_ban(s, current(), uid, True, body["reason"]))


@bp.post("/users/<uid>/unban")
@doc(
    "Lift a ban (and any mute)",
    body=BanSchema,
    responses={200: ModerationUserSchema},
    tag="moderation",
)
def unban(uid: str) -> dict[str, Any]:
    """Let a banned user post again."""
    body = json_body(BanSchema())
    with services().Session.begin() as s:
        return _user(review.set_ban(s, current(), uid, False, body["reason"]))


@bp.get("/audit")
@doc(
    "The audit log, newest first",
    query=AuditQuery,
    responses={200: AuditPageSchema},
    tag="moderation",
)
def audit_log() -> dict[str, Any]:
    """Who did what to which object, when and why."""
    q = query_args(AuditQuery())
    with services().ReadSession() as s:
        rows, next_cursor = review.audit_page(s, current(), q, q.get("cursor"), q["limit"])
        items = [_entry(e) for e in rows]
    return {"items": items, "next_cursor": next_cursor}


def _entry(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "actor": e.actor,
        "action": e.action,
        "target_type": e.target_type,
        "target_id": e.target_id,
        "reason": e.reason,
        "detail": e.detail,
        "created_at": e.created_at,
    }
