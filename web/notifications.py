"""In-app notifications: list (newest first, unread filter), read one, read all."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from core.services import services
from domain import notifications
from web.auth import current, require_auth
from web.http import doc, json_body, query_args
from web.schemas.notifications import (
    NotificationListQuery,
    NotificationPageSchema,
    NotificationSchema,
    ReadAllResultSchema,
    ReadAllSchema,
)

bp = Blueprint("notifications", __name__, url_prefix="/v1/notifications")
bp.before_request(require_auth)


@bp.get("")
@doc(
    "List my notifications, newest first",
    query=NotificationListQuery,
    responses={200: NotificationPageSchema},
    tag="notifications",
)
def list_notifications() -> dict[str, Any]:
    """List the caller's notifications with the unread total (the badge)."""
    q = query_args(NotificationListQuery())
    user = current().require_user()
    with services().ReadSession() as s:
        items, next_cursor, unread = notifications.list_page(
            s, user, unread_only=q["unread"], cursor=q.get("cursor"), limit=q["limit"]
        )
    return {"items": items, "next_cursor": next_cursor, "unread_count": unread}


@bp.post("/<nid>/read")
@doc("Mark a notification read", responses={200: NotificationSchema}, tag="notifications")
def read_one(nid: str) -> dict[str, Any]:
    """Mark one notification read on every device (and retract its pushes)."""
    user = current().require_user()
    with services().Session.begin() as s:
        return notifications.render(notifications.mark_read(s, user, nid))


@bp.post("/read-all")
@doc(
    "Mark all my notifications read (optionally of one conversation)",
    body=ReadAllSchema,
    responses={200: ReadAllResultSchema},
    tag="notifications",
)
def read_all() -> dict[str, int]:
    """Clear the badge: every unread notification, or those of one conversation."""
    from flask import request

    body = json_body(ReadAllSchema()) if request.content_length else {}
    user = current().require_user()
    with services().Session.begin() as s:
        n = notifications.mark_all_read(s, user, body.get("conversation_id"))
    return {"updated": n}
