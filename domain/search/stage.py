"""The index stage: the tokens of moderated messages written, for many conversations at once.

The fan-out runs it inline, in the transaction that moves the delivery cursors past the
messages (domain/fanout.py): the index then changes exactly when the cursor does, with no
task, outbox row or transaction of its own per conversation, and its writes come after the
events are in the streams, so a socket never waits for them. `tasks.index.index_messages`
runs it for one conversation: the fan-out's fallback when a text cannot be indexed, re-runs,
and the rows migration e5b8f0a3c4d6 queued.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.services import Services
from domain import outbox
from domain.keys import message_aad
from domain.search import index
from models import Conversation, Message
from models.db import Db, connection_of

logger = logging.getLogger(__name__)

INDEX_TASK = "tasks.index.index_messages"

_LIVE = select(Conversation.id).where(
    Conversation.id.in_(bindparam("c", expanding=True)), Conversation.deleted_at.is_(None)
)
_TEXTS = select(
    Message.id,
    Message.conversation_id,
    Message.seq,
    Message.key_id,
    Message.text_ct,
    Message.deleted_at,
    Message.expired_at,
    Message.created_at,
).where(Message.id.in_(bindparam("ids", expanding=True)))


def index_messages(svc: Services, conversation_id: str, message_ids: Sequence[str]) -> int:
    """The index task: (re)write the tokens of these messages, mark the task done. Returns
    the tokens written."""
    with svc.engine.begin() as conn:
        written, n = index_many(svc, conn, {conversation_id: message_ids})
        outbox.mark_done(conn, message_ids, INDEX_TASK)
    logger.info(
        "indexed %d message(s), %d token(s)",
        n,
        written,
        extra={"conversation_id": conversation_id},
    )
    return written


def queue(session: Session, conversation_id: str, message_ids: Sequence[str]) -> None:
    """Leave these messages to the index task, through the outbox (sent after the commit)."""
    if message_ids:
        outbox.add(session, INDEX_TASK, [conversation_id, list(message_ids)], message_ids[0])


def index_many(svc: Services, db: Db, messages: Mapping[str, Sequence[str]]) -> tuple[int, int]:
    """Make the tokens of these messages (conversation id -> message ids) those of their
    current texts, in the caller's transaction: (tokens written, messages read). Messages
    gone, deleted, expired or without text get none; a deleted conversation (its keys
    shredded, its index dropped) gets no index."""
    found = prepare(svc, db, messages)
    found.writes.apply(connection_of(db))
    return found.written, found.read


@dataclass
class Prepared:
    """The index writes for some messages, not yet applied (see `prepare`)."""

    writes: index.Writes = field(default_factory=index.Writes)
    written: int = 0  # tokens
    read: int = 0  # messages
    refs: dict[str, int] = field(default_factory=dict)  # conversation id -> index ref


def prepare(svc: Services, db: Db, messages: Mapping[str, Sequence[str]]) -> Prepared:
    """`index_many`'s work up to its writes: nothing of the index changes until
    `Prepared.writes.apply` (only a conversation's first index row may be made), so a text
    that cannot be opened or indexed fails here, and the caller can leave it to the index
    task.

    The conversations' index rows are locked (in id order) before the texts are read, so an
    edit committing meanwhile is either seen here or rewrites the postings after us. Whatever
    the number of conversations: two reads, the texts and the rows to rewrite, then one
    executemany per kind of write."""
    if not svc.settings.search_index:
        return Prepared()
    conn = connection_of(db)
    cids = sorted(c for c, ids in messages.items() if ids)
    refs = index.locked(conn, cids, create=False)
    fresh = [c for c in cids if c not in refs]
    if fresh:  # a conversation's first index: made only while it lives
        live = conn.execute(_LIVE, {"c": fresh}).scalars().all()
        refs.update(index.locked(conn, live))
    return _prepared(svc, conn, messages, refs)


def prepare_ahead(svc: Services, db: Db, messages: Mapping[str, Sequence[str]]) -> Prepared | None:
    """`prepare` in a read-only transaction, for a later one to apply if `still_as_prepared`
    there (SQLite's fan-out: the work is done before the write lock). None when a
    conversation has no index row yet: making one is a write."""
    if not svc.settings.search_index:
        return Prepared()
    conn = connection_of(db)
    cids = sorted(c for c, ids in messages.items() if ids)
    refs = index.locked(conn, cids, create=False)
    if len(refs) < len(cids):
        return None
    return _prepared(svc, conn, messages, refs)


def _prepared(
    svc: Services, conn: Connection, messages: Mapping[str, Sequence[str]], refs: dict[str, int]
) -> Prepared:
    wanted = [(c, mid) for c in sorted(refs) for mid in messages[c]]
    if not wanted:
        return Prepared(refs=refs)
    of = dict((mid, c) for c, mid in wanted)
    rows = [r for r in conn.execute(_TEXTS, {"ids": list(of)}) if of[r.id] == r.conversation_id]
    changes: dict[int, index.Change] = {}
    for r in rows:
        change = changes.setdefault(refs[r.conversation_id], index.Change())
        change.seqs.add(r.seq)
        if r.key_id is None or r.text_ct is None or r.deleted_at or r.expired_at:
            continue
        try:
            text = svc.keyring.open_text(r.key_id, r.text_ct, message_aad(r.id))
            change.add(svc, r.seq, r.key_id, text, r.created_at)
        except MissingKeyError:  # the conversation was deleted meanwhile: nothing to index
            continue
    writes = index.planned(conn, changes)
    return Prepared(writes, sum(c.written for c in changes.values()), len(rows), refs)


def still_as_prepared(db: Db, prepared: Prepared) -> bool:
    """Whether writes prepared in an earlier transaction still apply: the conversations have
    the same index rows, and the postings rows they rewrite are as they were read. An edit,
    a delete, an expiry or another writer of these messages' postings since changes those
    rows; so does a conversation's deletion (its index row goes)."""
    if not prepared.refs:  # nothing was prepared (the index is off, or nothing to index)
        return True
    conn = connection_of(db)
    if index.locked(conn, prepared.refs, create=False) != prepared.refs:
        return False
    return index.unchanged(conn, prepared.writes)
