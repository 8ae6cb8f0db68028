"""Presence over REST: who of a conversation is online right now.

Presence events on the socket only go to members of small conversations (they would be
quadratic in a large group); every client can ask here instead.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app
from marshmallow import fields

from core.services import services
from domain import conversations as convs
from domain.errors import Forbidden
from web.auth import current, require_auth
from web.http import doc
from web.live.presence import PresenceStore
from web.schemas.common import ResponseSchema

bp = Blueprint("presence", __name__, url_prefix="/v1")
bp.before_request(require_auth)


class MemberPresenceSchema(ResponseSchema):
    user_id = fields.String()
    online = fields.Boolean()


class PresenceSchema(ResponseSchema):
    conversation_id = fields.String()
    online = fields.List(fields.String(), metadata={"description": "members online now"})
    members = fields.List(fields.Nested(MemberPresenceSchema))


@bp.get("/conversations/<cid>/presence")
@doc("Which members are online", responses={200: PresenceSchema}, tag="conversations")
def conversation_presence(cid: str) -> dict[str, Any]:
    """List the conversation's members with whether each holds a live socket (members only)."""
    svc = services()
    with svc.Session() as s:
        conv, part = convs.readable(s, current(), cid)
        if part is None:
            raise Forbidden("only the conversation's members see its presence")
        users = [p.user_id for p in conv.active_participants()]
    ttl = current_app.extensions["parley_live"].presence_ttl_s
    online = PresenceStore(svc.redis, "", ttl).online(users)
    return {
        "conversation_id": cid,
        "online": [u for u in users if u in online],
        "members": [{"user_id": u, "online": u in online} for u in users],
    }
