"""Conversations: create / get-or-create, list, read, change, members, per-user settings."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from marshmallow import fields, validate

from core.services import services
from domain import conversations as convs
from domain.render import preview, render_conversation
from web.auth import current, require_auth
from web.http import doc, json_body, query_args
from web.limits import limits
from web.schemas.conversations import (
    ConversationCreateSchema,
    ConversationListQuery,
    ConversationPageSchema,
    ConversationPatchSchema,
    ConversationSchema,
    MemberRoleSchema,
    MembersAddSchema,
    MySettingsSchema,
    UnreadTotalsSchema,
)

bp = Blueprint("conversations", __name__, url_prefix="/v1")
bp.before_request(require_auth)


class ConversationSearchListQuery(ConversationListQuery):
    """The list's filters, and `q`: a subject or member name contains it (docs/search.md)."""

    q = fields.String(validate=validate.Length(1, 200))


def _render_one(session: Any, conv: Any) -> dict[str, Any]:
    who = current()
    me = convs.membership(session, conv.id, who.user_id)
    unread = convs.unread_counts(session, me.user_id, [conv.id]) if me else {}
    last = convs.last_messages(session, [conv.id]).get(conv.id)
    return render_conversation(conv, me, unread.get(conv.id, 0), preview(services(), last))


@bp.post("/conversations")
@doc(
    "Create a conversation, or get the existing one",
    body=ConversationCreateSchema,
    responses={201: ConversationSchema, 200: ConversationSchema},
    tag="conversations",
)
@limits("conversation")
def create_conversation() -> tuple[dict[str, Any], int]:
    """Create a conversation; a direct pair or a context with the same members returns 200."""
    body = json_body(ConversationCreateSchema())
    svc = services()
    with svc.Session.begin() as s:
        conv, created = convs.create(svc, s, current(), body)
        return _render_one(s, conv), 201 if created else 200


@bp.get("/conversations")
@doc(
    "List my conversations, newest activity first",
    query=ConversationSearchListQuery,
    responses={200: ConversationPageSchema},
    tag="conversations",
)
def list_conversations() -> dict[str, Any]:
    """List conversations with unread counts and a last-message preview."""
    q = query_args(ConversationSearchListQuery())
    svc = services()
    with svc.ReadSession() as s:
        rows, mine, unread, next_cursor = convs.list_for(
            s,
            current(),
            status=q.get("status"),
            context_type=q.get("context_type"),
            context_id=q.get("context_id"),
            q=q.get("q"),
            archived=q.get("archived"),
            unread_only=q["unread_only"],
            cursor=q.get("cursor"),
            limit=q["limit"],
        )
        lasts = convs.last_messages(s, [c.id for c in rows])
        items = [
            render_conversation(
                c, mine.get(c.id), unread.get(c.id, 0), preview(svc, lasts.get(c.id))
            )
            for c in rows
        ]
    return {"items": items, "next_cursor": next_cursor}


@bp.get("/conversations/<cid>")
@doc("Get a conversation", responses={200: ConversationSchema}, tag="conversations")
def get_conversation(cid: str) -> dict[str, Any]:
    """Get one conversation the caller takes part in."""
    with services().ReadSession() as s:
        conv, _ = convs.readable(s, current(), cid)
        return _render_one(s, conv)


@bp.patch("/conversations/<cid>")
@doc(
    "Change subject, status or metadata",
    body=ConversationPatchSchema,
    responses={200: ConversationSchema},
    tag="conversations",
)
def patch_conversation(cid: str) -> dict[str, Any]:
    """Change a conversation (owners, admins, or an API key)."""
    body = json_body(ConversationPatchSchema())
    with services().Session.begin() as s:
        conv = convs.update(s, current(), cid, body)
        return _render_one(s, conv)


@bp.post("/conversations/<cid>/members")
@doc("Add members", body=MembersAddSchema, responses={200: ConversationSchema}, tag="conversations")
def add_members(cid: str) -> dict[str, Any]:
    """Add members to a group or support conversation."""
    body = json_body(MembersAddSchema())
    svc = services()
    with svc.Session.begin() as s:
        conv = convs.add_members(
            s, current(), cid, body["user_ids"], body["role"], svc.settings.max_members
        )
        return _render_one(s, conv)


@bp.delete("/conversations/<cid>/members/<uid>")
@doc("Remove a member, or leave", responses={200: ConversationSchema}, tag="conversations")
def remove_member(cid: str, uid: str) -> dict[str, Any]:
    """Remove a member (owners/admins), or leave (anyone, for themselves)."""
    with services().Session.begin() as s:
        conv = convs.remove_member(s, current(), cid, uid)
        return render_conversation(conv)


@bp.patch("/conversations/<cid>/members/<uid>")
@doc(
    "Change a member's role",
    body=MemberRoleSchema,
    responses={200: ConversationSchema},
    tag="conversations",
)
def set_member_role(cid: str, uid: str) -> dict[str, Any]:
    """Change a member's role (owners/admins, or an API key)."""
    body = json_body(MemberRoleSchema())
    with services().Session.begin() as s:
        conv = convs.set_role(s, current(), cid, uid, body["role"])
        return _render_one(s, conv)


@bp.patch("/conversations/<cid>/me")
@doc(
    "Change my settings for a conversation (archive, mute, notification level)",
    body=MySettingsSchema,
    responses={200: ConversationSchema},
    tag="conversations",
)
def my_settings(cid: str) -> dict[str, Any]:
    """Archive, mute or set the notification level for the caller only."""
    body = json_body(MySettingsSchema())
    with services().Session.begin() as s:
        part = convs.update_my_settings(s, current(), cid, body)
        return _render_one(s, part.conversation)


@bp.get("/unread")
@doc(
    "Unread totals across my conversations",
    responses={200: UnreadTotalsSchema},
    tag="conversations",
)
def unread_totals() -> dict[str, int]:
    """Unread messages in total and the number of conversations that have any."""
    who = current()
    with services().ReadSession() as s:
        return convs.unread_totals(s, who.require_user())
