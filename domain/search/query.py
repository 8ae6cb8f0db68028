"""Answering a search for one caller: the index finds candidates, memory decides.

The query's terms are hashed under the search key of every data key of the conversations in
scope; the index returns the messages holding all of them (newest first, membership and
visibility checked in the same SQL). Each candidate is then opened and rendered as the caller
would see it (masked spans starred for recipients) and matched again in memory, so a hash
collision, a prefix longer than the indexed ones, a phrase's word order or a masked word never
makes a hit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Integer,
    String,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from core.services import Services
from domain.conversations import readable, unexpired, visible_to_reader
from domain.errors import Invalid
from domain.message_actions import reactions_for
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from domain.render import message_text, render_message
from domain.search import postings
from domain.search.candidates import Candidate, candidates
from domain.search.text import Query, match, parse
from models import (
    Attachment,
    Conversation,
    DataKey,
    Message,
    Participant,
    Reaction,
    SearchConversation,
)

BATCH = 100  # candidates read per query round
MAX_EXAMINED = 2000  # candidates opened per request; past it the page ends with a cursor


def search(
    svc: Services, session: Session, who: Principal, params: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of hits ({"message", "highlights"}), newest first, and the next cursor."""
    query = parse(params.get("q") or "")
    limit: int = params.get("limit", 20)
    after: tuple[datetime, str] | None = None
    if params.get("cursor"):
        at, last_id = decode_cursor(params["cursor"], {"t": datetime, "id": str})
        after = (at, last_id)
    roles, keys, stmt, member = _scope(session, who, params.get("conversation_id"))
    found = candidates(svc, session, keys, sorted(query.needs()))
    if not found:
        return [], None
    stmt = _filters(stmt, params)
    if after is not None:
        stmt = stmt.where(
            or_(
                Message.created_at < after[0],
                and_(Message.created_at == after[0], Message.id < after[1]),
            )
        )
        newest = postings.micros(after[0])  # nothing newer than the cursor can come
        found = [c for c in found if c[0] <= newest]
    dialect = session.get_bind().dialect.name
    first, later = _pages(stmt, dialect)
    binds: dict[str, Any] = {"me": who.user_id or ""}
    hits: list[_Hit] = []
    examined = 0
    last: Message | None = None
    for tranche in _tranches(found, limit + 1):
        binds.update(_tranche(dialect, tranche))
        page = first
        while len(hits) <= limit and examined < MAX_EXAMINED:
            # BATCH rows a read: a tranche is about that size, but the one batch of the
            # candidates of unknown time (or a long run of equal times) may be far larger
            batch = session.execute(page, binds).all()
            for row in batch:
                msg = last = row[0]
                examined += 1
                spans = _verify(svc, who, roles, query, msg)
                if spans is not None:
                    hits.append(_Hit(msg, spans, row[1], row[2] if len(row) > 2 else member))
                    if len(hits) > limit:
                        break
            if len(batch) < BATCH:
                break
            page, binds["at"], binds["mid"] = later, batch[-1][0].created_at, batch[-1][0].id
        if len(hits) > limit or examined >= MAX_EXAMINED:
            break
    next_cursor = None
    if len(hits) > limit:
        hits = hits[:limit]
        next_cursor = _cursor(hits[-1].msg)
    elif examined >= MAX_EXAMINED and last is not None:
        next_cursor = _cursor(last)  # more may match: the client asks again from here
    return _render(svc, session, who, hits), next_cursor


class _Hit(NamedTuple):
    msg: Message
    spans: list[list[int]]
    reacted: bool  # whether the message has any reaction (its reactions are read only then)
    part: Participant | None  # the caller's membership of its conversation


def _tranches(found: list[Candidate], first: int = BATCH) -> Iterator[list[Candidate]]:
    """The candidates, newest first, in batches of about `first` (enough for a page when
    most candidates are hits, as with a common word), then BATCH, each ending with all those of
    its last time: every candidate of a later batch is strictly older than every one of an
    earlier batch, so the database sorting each batch sorts them all. A candidate of unknown
    time (indexed before the times rows existed) makes one batch of all of them."""
    if any(c[0] == 0 for c in found):
        yield found
        return
    found.sort(reverse=True)
    start = 0
    while start < len(found):
        end = min(start + (BATCH if start else first), len(found))
        while end < len(found) and found[end][0] == found[end - 1][0]:
            end += 1
        yield found[start:end]
        start = end


def _keys_of(session: Session, stmt: Any, params: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    return [(c, r, k) for c, r, k in session.execute(stmt, params) if r is not None and k]


def _tranche(dialect: str, tranche: list[Candidate]) -> dict[str, Any]:
    """The tranche's (cid, seq) pairs as the page statements bind them: one parameter per
    column whatever their number."""
    if dialect == "postgresql":
        return {"cand_c": [c for _, c, _ in tranche], "cand_s": [q for _, _, q in tranche]}
    return {"cand": json.dumps([[c, q] for _, c, q in tranche])}


def _relation(dialect: str) -> Any:
    """The tranche as a relation (cid, seq)."""
    if dialect == "postgresql":
        cids = bindparam("cand_c", type_=ARRAY(String))
        seqs = bindparam("cand_s", type_=ARRAY(Integer))
        return select(func.unnest(cids).label("cid"), func.unnest(seqs).label("seq")).subquery()
    each = func.json_each(bindparam("cand", type_=String)).table_valued("value")
    return select(
        func.json_extract(each.c.value, "$[0]").label("cid"),
        func.json_extract(each.c.value, "$[1]").label("seq"),
    ).subquery()


_PAGES: dict[tuple[int, str], tuple[Any, Any]] = {}  # by (id of a constant statement, dialect)


def _pages(stmt: Any, dialect: str) -> tuple[Any, Any]:
    """`stmt` joined to the tranche, newest first, BATCH rows: from the tranche's start, and
    past the message (`at`, `mid`). Built once for the module's constant statements (building
    one and its cache key cost as much as running it), else for each search."""
    constant = any(stmt is c for c in _CONSTANT)
    done = _PAGES.get((id(stmt), dialect)) if constant else None
    if done is not None:
        return done
    tranche = _relation(dialect)
    joined = stmt.join(
        tranche, and_(Message.conversation_id == tranche.c.cid, Message.seq == tranche.c.seq)
    ).order_by(Message.created_at.desc(), Message.id.desc())
    at = bindparam("at", type_=Message.created_at.type)
    past = or_(
        Message.created_at < at, and_(Message.created_at == at, Message.id < bindparam("mid"))
    )
    done = (joined.limit(BATCH), joined.where(past).limit(BATCH))
    if constant:
        _PAGES[id(stmt), dialect] = done
    return done


# The caller's conversations, role, and index keys in one read (a conversation with several
# data keys, after a rotation, has a row for each; one not indexed yet has no ref).
_MEMBER_KEYS = (
    select(Participant.conversation_id, Participant.role, SearchConversation.ref, DataKey.id)
    .join(Conversation, Conversation.id == Participant.conversation_id)
    .outerjoin(
        SearchConversation, SearchConversation.conversation_id == Participant.conversation_id
    )
    .outerjoin(DataKey, DataKey.conversation_id == Participant.conversation_id)
    .where(
        Participant.user_id == bindparam("me"),
        Participant.left_at.is_(None),
        Conversation.deleted_at.is_(None),
    )
)
_CONVERSATION_KEYS = (
    select(SearchConversation.conversation_id, SearchConversation.ref, DataKey.id)
    .join(DataKey, DataKey.conversation_id == SearchConversation.conversation_id)
    .where(SearchConversation.conversation_id == bindparam("c"))
)


# Selected with each candidate: a page whose messages have no reaction skips that read.
_REACTED = exists().where(Reaction.message_id == Message.id).label("reacted")
# Whether the message's conversation is live (NULL, so no row, when it has none), as a
# subquery, not a join: PostgreSQL planned the join for every page, half the planning time.
_LIVE = (
    select(Conversation.deleted_at.is_(None))
    .where(Conversation.id == Message.conversation_id)
    .scalar_subquery()
)
_READABLE = select(Message, _REACTED).where(
    _LIVE, Message.deleted_at.is_(None), Message.text_ct.is_not(None), unexpired()
)
# Across the caller's (`me`) conversations, with the membership row it joins: the candidates a
# platform moderator may read, and those anyone else may (delivered, their own, or any where
# they moderate).
_MEMBER = _READABLE.add_columns(Participant).join(
    Participant,
    and_(
        Participant.conversation_id == Message.conversation_id,
        Participant.user_id == bindparam("me"),
        Participant.left_at.is_(None),
    ),
)
_MEMBER_VISIBLE = _MEMBER.where(
    or_(
        Message.state == "delivered",
        Message.sender_id == bindparam("me"),
        Participant.role == "moderator",
    )
)
_CONSTANT = (_MEMBER, _MEMBER_VISIBLE)


def _scope(
    session: Session, who: Principal, cid: str | None
) -> tuple[dict[str, str | None], list[tuple[str, int, str]], Any, Participant | None]:
    """The conversations searched with the caller's role in each, their (conversation, index
    ref, data key id), the candidate query restricted to what the caller may read there
    (membership and visibility checked in the SQL, whatever the candidates), and with
    `conversation_id` the caller's membership of it. The query selects (message, reacted) and,
    across the caller's conversations, the caller's membership row it joins (so rendering
    needs no read of the members)."""
    me = who.user_id
    if cid is not None:
        _, part = readable(session, who, cid)  # 404 for a conversation the caller cannot read
        role = part.role if part is not None else None
        stmt = _READABLE.where(Message.conversation_id == cid)
        if not who.is_moderator and role != "moderator":
            stmt = stmt.where(visible_to_reader(me or ""))
        return {cid: role}, _keys_of(session, _CONVERSATION_KEYS, {"c": cid}), stmt, part
    if me is None:
        raise Invalid(
            "an API key searches one conversation at a time: give conversation_id",
            {"conversation_id": ["required with an API key"]},
        )
    roles: dict[str, str | None] = {}
    keys: list[tuple[str, int, str]] = []
    for c, role, ref, dk_id in session.execute(_MEMBER_KEYS, {"me": me}):
        roles[c] = role
        if ref is not None and dk_id is not None:
            keys.append((c, ref, dk_id))
    return roles, keys, (_MEMBER if who.is_moderator else _MEMBER_VISIBLE), None


def _filters(stmt: Any, params: Mapping[str, Any]) -> Any:
    if params.get("sender_id"):
        stmt = stmt.where(Message.sender_id == params["sender_id"])
    if params.get("since"):
        stmt = stmt.where(Message.created_at >= params["since"])
    if params.get("until"):
        stmt = stmt.where(Message.created_at < params["until"])
    if params.get("has_attachments") is not None:
        carries = exists().where(Attachment.message_id == Message.id)
        stmt = stmt.where(carries if params["has_attachments"] else ~carries)
    return stmt


def _privileged(who: Principal, role: str | None, msg: Message) -> bool:
    """Sees the original text (sender, moderators); others see masked spans starred."""
    is_sender = msg.sender_id is not None and msg.sender_id == who.user_id
    return is_sender or who.is_moderator or role == "moderator"


def _verify(
    svc: Services, who: Principal, roles: Mapping[str, str | None], query: Query, msg: Message
) -> list[list[int]] | None:
    """The highlights of `query` in the text as the caller sees it, or None: not a hit."""
    text = message_text(svc, msg, _privileged(who, roles.get(msg.conversation_id), msg))
    return match(query, text) if text is not None else None


def _cursor(msg: Message) -> str:
    return encode_cursor({"t": msg.created_at.isoformat(), "id": msg.id})


def _render(
    svc: Services, session: Session, who: Principal, hits: list[_Hit]
) -> list[dict[str, Any]]:
    """The hits as the caller sees them. The members of a conversation are read only where the
    caller sent a hit (its status comes from the other members' cursors), and reactions only
    for the hits that have some."""
    me = who.user_id
    own = {h.msg.conversation_id for h in hits if me is not None and h.msg.sender_id == me}
    members: dict[str, list[Participant]] = {}
    if own:
        for p in session.scalars(
            select(Participant).where(
                Participant.conversation_id.in_(own), Participant.left_at.is_(None)
            )
        ):
            members.setdefault(p.conversation_id, []).append(p)
    reactions = reactions_for(session, [h.msg.id for h in hits if h.reacted], me)
    return [
        {
            "message": render_message(
                svc, h.msg, who, h.part, members.get(h.msg.conversation_id, []), reactions
            ),
            "highlights": h.spans,
        }
        for h in hits
    ]
