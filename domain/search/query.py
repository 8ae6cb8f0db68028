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
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, exists, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.services import Services
from domain.conversations import readable, unexpired, visible_to_reader
from domain.errors import Invalid
from domain.message_actions import reactions_for
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from domain.render import message_text, render_message
from domain.search import postings
from domain.search.index import index_key, token
from domain.search.text import Query, match, parse
from models import (
    Attachment,
    Conversation,
    DataKey,
    Message,
    Participant,
    SearchConversation,
    SearchPostings,
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
    roles, stmt = _scope(session, who, params.get("conversation_id"))
    found = _candidates(svc, session, list(roles), sorted(query.needs()))
    if not found:
        return [], None
    candidates = _relation(session, found)
    stmt = stmt.join(
        candidates,
        and_(
            Message.conversation_id == candidates.c.cid,
            Message.seq == candidates.c.seq,
        ),
    )
    stmt = _filters(stmt, params)
    hits: list[tuple[Message, list[list[int]]]] = []
    examined = 0
    last: Message | None = None
    while len(hits) <= limit and examined < MAX_EXAMINED:
        page = stmt
        if after is not None:
            page = page.where(
                or_(
                    Message.created_at < after[0],
                    and_(Message.created_at == after[0], Message.id < after[1]),
                )
            )
        batch = list(
            session.scalars(
                page.order_by(Message.created_at.desc(), Message.id.desc()).limit(BATCH)
            )
        )
        for msg in batch:
            examined += 1
            last = msg
            spans = _verify(svc, who, roles, query, msg)
            if spans is not None:
                hits.append((msg, spans))
                if len(hits) > limit:
                    break
        if len(batch) < BATCH:
            break
        after = (batch[-1].created_at, batch[-1].id)
    next_cursor = None
    if len(hits) > limit:
        hits = hits[:limit]
        next_cursor = _cursor(hits[-1][0])
    elif examined >= MAX_EXAMINED and last is not None:
        next_cursor = _cursor(last)  # more may match: the client asks again from here
    return _render(svc, session, who, roles, hits), next_cursor


def _candidates(
    svc: Services, session: Session, cids: list[str], needs: list[tuple[str, str]]
) -> list[tuple[str, int]]:
    """(conversation, seq) of every message whose postings hold all of `needs`, under any
    data key of its conversation."""
    refs: dict[int, str] = {
        ref: cid
        for ref, cid in session.execute(
            select(SearchConversation.ref, SearchConversation.conversation_id).where(
                SearchConversation.conversation_id.in_(cids)
            )
        )
    }
    by_cid = {cid: ref for ref, cid in refs.items()}
    wanted: list[tuple[int, list[int]]] = []  # (ref, the needs' tokens under one data key)
    for cid, dk_id in session.execute(
        select(DataKey.conversation_id, DataKey.id).where(DataKey.conversation_id.in_(list(by_cid)))
    ):
        try:
            key = index_key(svc, dk_id)
        except MissingKeyError:  # shredded meanwhile
            continue
        if cid is not None:
            wanted.append((by_cid[cid], [token(key, need) for need in needs]))
    by_bucket: dict[int, set[int]] = {}
    for ref, ts in wanted:
        for t in ts:
            by_bucket.setdefault(postings.bucket(t), set()).add(ref)
    if not by_bucket:
        return []
    rows: dict[tuple[int, int], dict[int, bytes]] = {}
    for ref, b, g, data in session.execute(
        select(
            SearchPostings.ref, SearchPostings.bucket, SearchPostings.segment, SearchPostings.data
        ).where(  # key lookups, one IN per bucket: a row-value IN makes SQLite scan the table
            or_(
                *(
                    and_(SearchPostings.bucket == b, SearchPostings.ref.in_(sorted(refs_b)))
                    for b, refs_b in by_bucket.items()
                )
            )
        )
    ):
        rows.setdefault((ref, b), {})[g] = data
    found: set[tuple[str, int]] = set()
    for ref, ts in wanted:
        first = rows.get((ref, postings.bucket(ts[0])), {})
        for g, data in first.items():
            offsets = set(postings.lookup(data, ts[0]))
            for t in ts[1:]:
                if not offsets:
                    break
                other = rows.get((ref, postings.bucket(t)), {}).get(g)
                offsets &= set(postings.lookup(other, t)) if other is not None else set()
            base = g * postings.SEGMENT_SEQS
            found.update((refs[ref], base + o) for o in offsets)
    return sorted(found)


def _relation(session: Session, found: list[tuple[str, int]]) -> Any:
    """The candidates as a relation (cid, seq) the SQL can join, in one bound parameter per
    column whatever their number."""
    if session.get_bind().dialect.name == "postgresql":
        return select(
            func.unnest(bindparam("cand_c", [c for c, _ in found], ARRAY(String))).label("cid"),
            func.unnest(bindparam("cand_s", [q for _, q in found], ARRAY(Integer))).label("seq"),
        ).subquery()
    each = func.json_each(bindparam("cand", json.dumps(found))).table_valued("value")
    return select(
        func.json_extract(each.c.value, "$[0]").label("cid"),
        func.json_extract(each.c.value, "$[1]").label("seq"),
    ).subquery()


def _scope(session: Session, who: Principal, cid: str | None) -> tuple[dict[str, str | None], Any]:
    """The conversations searched, with the caller's role in each, and the candidate query
    restricted to what the caller may read there."""
    base = (
        select(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Conversation.deleted_at.is_(None),
            Message.deleted_at.is_(None),
            Message.text_ct.is_not(None),
            unexpired(),
        )
    )
    me = who.user_id
    if cid is not None:
        _, part = readable(session, who, cid)  # 404 for a conversation the caller cannot read
        role = part.role if part is not None else None
        stmt = base.where(Message.conversation_id == cid)
        if not who.is_moderator and role != "moderator":
            stmt = stmt.where(visible_to_reader(me or ""))
        return {cid: role}, stmt
    if me is None:
        raise Invalid(
            "an API key searches one conversation at a time: give conversation_id",
            {"conversation_id": ["required with an API key"]},
        )
    roles: dict[str, str | None] = {
        c: r
        for c, r in session.execute(
            select(Participant.conversation_id, Participant.role)
            .join(Conversation, Conversation.id == Participant.conversation_id)
            .where(
                Participant.user_id == me,
                Participant.left_at.is_(None),
                Conversation.deleted_at.is_(None),
            )
        )
    }
    stmt = base.join(
        Participant,
        and_(
            Participant.conversation_id == Message.conversation_id,
            Participant.user_id == me,
            Participant.left_at.is_(None),
        ),
    )
    if not who.is_moderator:
        stmt = stmt.where(
            or_(
                Message.state == "delivered",
                Message.sender_id == me,
                Participant.role == "moderator",
            )
        )
    return roles, stmt


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
    svc: Services,
    session: Session,
    who: Principal,
    roles: Mapping[str, str | None],
    hits: list[tuple[Message, list[list[int]]]],
) -> list[dict[str, Any]]:
    if not hits:
        return []
    cids = {m.conversation_id for m, _ in hits}
    members: dict[str, list[Participant]] = {}
    for p in session.scalars(
        select(Participant).where(
            Participant.conversation_id.in_(cids), Participant.left_at.is_(None)
        )
    ):
        members.setdefault(p.conversation_id, []).append(p)
    reactions = reactions_for(session, [m.id for m, _ in hits], who.user_id)
    out = []
    for msg, spans in hits:
        conv_members = members.get(msg.conversation_id, [])
        part = next((p for p in conv_members if p.user_id == who.user_id), None)
        out.append(
            {
                "message": render_message(svc, msg, who, part, conv_members, reactions),
                "highlights": spans,
            }
        )
    return out
