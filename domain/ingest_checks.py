"""What one POST needs to know before group commit writes it (domain/ingest.py): the whole
batch's lookups in one statement, then domain/messages.post's rules, in its order, per POST."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Integer, Select, String, Table, and_, bindparam, literal, select, union_all

from core.services import Services
from domain.errors import Conflict, Invalid, NotFound
from domain.messages import _check_content, check_poster, check_standing
from domain.principals import Principal
from models import Conversation, Message, Participant, User

_conv = cast(Table, Conversation.__table__)
_part = cast(Table, Participant.__table__)
_user = cast(Table, User.__table__)
_msg = cast(Table, Message.__table__)
_earlier = _msg.alias("earlier")
_target = _msg.alias("target")

_CHECKS: dict[int, Select[Any]] = {}


def _statement(n: int) -> Select[Any]:
    """Everything `n` POSTs need to know, in one statement: their requests as a UNION ALL of
    bound rows (k, cid, uid, cmid, reply_to), each joined to its conversation (no row: no such
    conversation), the caller's membership and standing, an earlier message with its
    client_msg_id and its reply target. Built once per batch size."""
    found = _CHECKS.get(n)
    if found is not None:
        return found
    rows = [
        select(
            literal(k, Integer).label("k"),
            bindparam(f"cid{k}", type_=String).label("cid"),
            bindparam(f"uid{k}", type_=String).label("uid"),
            bindparam(f"cmid{k}", type_=String).label("cmid"),
            bindparam(f"reply{k}", type_=String).label("reply_to"),
        )
        for k in range(n)
    ]
    req = (union_all(*rows) if n > 1 else rows[0]).subquery("req")
    stmt = select(
        req.c.k,
        _conv.c.status,
        _conv.c.deleted_at,
        _part.c.role,
        _part.c.left_at,
        _user.c.banned_at,
        _user.c.muted_until,
        _earlier.c.id,
        _earlier.c.conversation_id,
        _target.c.conversation_id,
    ).select_from(
        req.join(_conv, _conv.c.id == req.c.cid)
        .outerjoin(_part, and_(_part.c.conversation_id == req.c.cid, _part.c.user_id == req.c.uid))
        .outerjoin(_user, _user.c.id == req.c.uid)
        .outerjoin(
            _earlier,
            and_(_earlier.c.sender_id == req.c.uid, _earlier.c.client_msg_id == req.c.cmid),
        )
        .outerjoin(_target, _target.c.id == req.c.reply_to)
    )
    _CHECKS[n] = stmt
    return stmt


def lookup(conn: Any, posts: Sequence[Posting]) -> list[Any]:
    """One row per POST (None where its conversation does not exist), in one round trip."""
    params: dict[str, Any] = {}
    for k, p in enumerate(posts):
        params[f"cid{k}"] = p.cid
        params[f"uid{k}"] = p.who.user_id
        params[f"cmid{k}"] = p.body.get("client_msg_id")
        params[f"reply{k}"] = p.body.get("reply_to")
    found = {row[0]: row for row in conn.execute(_statement(len(posts)), params)}
    return [found.get(k) for k in range(len(posts))]


@dataclass(frozen=True)
class Posting:
    """One POST: who, where, the validated body, and its request id (for the task header)."""

    who: Principal
    cid: str
    body: Mapping[str, Any]
    request_id: str | None = None


class Replay(Exception):
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id


def other_conversation() -> Conflict:
    return Conflict("client_msg_id was already used for a message in another conversation")


def check(svc: Services, p: Posting, row: Any) -> None:
    """The rules of domain/messages.post, in its order, from the POST's row. Raises its
    DomainError, or Replay with the message an earlier request with its client_msg_id made."""
    who, body = p.who, p.body
    if row is None or row.deleted_at is not None:
        raise NotFound(f"conversation {p.cid} does not exist or you are not a participant")
    role = row.role if row.role is not None and row.left_at is None else None
    if role is None and not who.is_moderator:
        raise NotFound(f"conversation {p.cid} does not exist or you are not a participant")
    mtype = body.get("type", "text")
    check_poster(who, mtype, role)
    if not who.is_service:
        check_standing(row.banned_at, row.muted_until)
    if row.status != "active":
        raise Conflict(f"the conversation is {row.status}; reopen it to post")
    _check_content(svc, mtype, body.get("text"), body)
    if row[7] is not None:  # earlier.id: this client_msg_id was used before
        if row[8] != p.cid:
            raise other_conversation()
        raise Replay(row[7])
    if body.get("reply_to") is not None and row[9] != p.cid:
        raise Invalid(
            "reply_to must be a message of this conversation", {"reply_to": ["unknown message"]}
        )
