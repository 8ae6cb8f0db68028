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
    stmt = stmt.order_by(Message.created_at.desc(), Message.id.desc())
    hits: list[_Hit] = []
    examined = 0
    last: Message | None = None
    for tranche in _tranches(found, limit + 1):
        joined = _joined(session, stmt, tranche)
        page = joined
        while len(hits) <= limit and examined < MAX_EXAMINED:
            # BATCH rows a read: a tranche is about that size, but the one batch of the
            # candidates of unknown time (or a long run of equal times) may be far larger
            batch = session.execute(page.limit(BATCH)).all()
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
            at, mid = batch[-1][0].created_at, batch[-1][0].id
            page = joined.where(
                or_(Message.created_at < at, and_(Message.created_at == at, Message.id < mid))
            )
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


def _joined(session: Session, stmt: Any, tranche: list[Candidate]) -> Any:
    """`stmt` restricted to the tranche's messages, joined as a relation (cid, seq) in one
    bound parameter per column whatever their number."""
    if session.get_bind().dialect.name == "postgresql":
        cids = bindparam("cand_c", [c for _, c, _ in tranche], ARRAY(String))
        seqs = bindparam("cand_s", [q for _, _, q in tranche], ARRAY(Integer))
        candidates = select(
            func.unnest(cids).label("cid"), func.unnest(seqs).label("seq")
        ).subquery()
    else:
        each = func.json_each(
            bindparam("cand", json.dumps([[c, q] for _, c, q in tranche]))
        ).table_valued("value")
        candidates = select(
            func.json_extract(each.c.value, "$[0]").label("cid"),
            func.json_extract(each.c.value, "$[1]").label("seq"),
        ).subquery()
    return stmt.join(
        candidates,
        and_(Message.conversation_id == candidates.c.cid, Message.seq == candidates.c.seq),
    )


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


def _scope(
    session: Session, who: Principal, cid: str | None
) -> tuple[dict[str, str | None], list[tuple[str, int, str]], Any, Participant | None]:
    """The conversations searched with the caller's role in each, their (conversation, index
    ref, data key id), the candidate query restricted to what the caller may read there
    (membership and visibility checked in the SQL, whatever the candidates), and with
    `conversation_id` the caller's membership of it. The query selects (message, reacted) and,
    across the caller's conversations, the caller's membership row it joins (so rendering
    needs no read of the members)."""
    base = (
        select(Message, _REACTED)
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
    stmt = base.add_columns(Participant).join(
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
    return roles, keys, stmt, None


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
