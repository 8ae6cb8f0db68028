"""The blind index: each term of a message stored only as a keyed 32-bit hash.

The key is derived (HKDF) from the data key the message is sealed under, so shredding a
conversation's keys makes its tokens meaningless, and tokens of one conversation say nothing
about another's. Tokens are kept in compact posting lists (models/search.py,
domain/search/postings.py). Every writer of a conversation's index first locks its
`search_conversations` row (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE serializes
writers anyway), then reads and rewrites the few rows it changes, so two writers never lose
each other's postings. A message's postings are replaced as a whole, so a stage that runs
twice leaves the same rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, update
from sqlalchemy import text as sql
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.services import Services
from domain.search import postings
from domain.search.text import index_terms
from models import Message, SearchConversation, SearchPostings
from models.db import Db, connection_of

logger = logging.getLogger(__name__)

TOKEN_BYTES = 4

Entry = tuple[int, str, str]  # (seq, data key id, text) of a message to index


def index_key(svc: Services, dk_id: str) -> bytes:
    """The conversation data key's search key (raises MissingKeyError once it is shredded).
    Cached in the keyring with the data key, so forgetting a shredded key drops it too."""
    return svc.keyring.derived_key(dk_id, b"parley-search-index:v2:" + dk_id.encode())


def token(key: bytes, term: tuple[str, str]) -> int:
    """A term's token: keyed BLAKE2b (a MAC and PRF, one compression for a word) truncated to a
    signed 32-bit integer. The kind ("t" full term, "p" prefix) separates the domains, so a
    prefix never equals a term. Collisions within a conversation only add candidates, which
    are checked in memory."""
    kind, value = term
    digest = hashlib.blake2b(
        kind.encode() + b"\x00" + value.encode(), key=key, digest_size=TOKEN_BYTES
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def tokens(key: bytes, terms: Iterable[tuple[str, str]]) -> set[int]:
    return {token(key, t) for t in terms}


def lock(db: Db, conversation_id: str, create: bool = True) -> int | None:
    """The conversation's index reference, its row locked for this transaction (made first
    when `create`); None when it has no index and `create` is false."""
    return locked(db, [conversation_id], create).get(conversation_id)


def locked(db: Db, conversation_ids: Iterable[str], create: bool = True) -> dict[str, int]:
    """conversation id -> index reference of these conversations, their rows locked for this
    transaction in conversation-id order (one lock order for every writer of several), made
    first when `create`; a conversation without one is left out unless `create`."""
    conn = connection_of(db)
    pg = conn.dialect.name == "postgresql"
    stmt = _REFS_FOR_UPDATE if pg else _REFS
    cids = sorted(set(conversation_ids))
    found: dict[str, int] = dict(conn.execute(stmt, {"c": cids}).all())
    missing = [c for c in cids if c not in found]
    if missing and create:
        conn.execute(_NEW_REF_PG if pg else _NEW_REF_SQLITE, [{"c": c} for c in missing])
        found.update(conn.execute(stmt, {"c": missing}).all())
    return found


# Built once, and run on the session's connection (Core, not the ORM's execution path): the
# stage runs them per batch, and building or ORM-compiling a statement cost more than running
# it on SQLite (py-spy: about half the stage's time went there).
_REFS = (
    select(SearchConversation.conversation_id, SearchConversation.ref)
    .where(SearchConversation.conversation_id.in_(bindparam("c", expanding=True)))
    .order_by(SearchConversation.conversation_id)
)
_REFS_FOR_UPDATE = _REFS.with_for_update()
_NEW_REF_PG, _NEW_REF_SQLITE = (
    dialect.insert(SearchConversation)
    .values(conversation_id=bindparam("c"))
    .on_conflict_do_nothing(index_elements=["conversation_id"])
    for dialect in (postgresql, sqlite)
)
# The rows at (ref, bucket, segment) keys given in one parameter: a constant statement
# whatever their number, each key a primary-key lookup. On SQLite a key is one integer: ref
# (int4, 31 bits) << 29 | bucket (5 bits) << 24 | segment (seq is int4: 24 bits), 60 bits.
_AT_SQLITE = sql(
    "SELECT p.ref, p.bucket, p.segment, p.data FROM json_each(:keys) AS k"
    " JOIN search_postings AS p ON p.ref = k.value >> 29"
    " AND p.bucket = (k.value >> 24) & 31 AND p.segment = k.value & 16777215"
)
# On PostgreSQL through the driver's cursor with binary results, so bytea comes as bytes, not
# as hex text to decode (a third of the read's time). The bucket comes with each key, not as a
# constant: a stale estimate of one bucket value's rows once made the planner scan them all.
_AT_PG = (
    "SELECT p.ref, p.bucket, p.segment, p.data"
    " FROM unnest(%s::int[], %s::int[], %s::int[]) AS k(ref, bucket, segment)"
    " JOIN search_postings AS p"
    " ON p.ref = k.ref AND p.bucket = k.bucket AND p.segment = k.segment"
)
_TABLE = cast(Table, SearchPostings.__table__)
_KEY = (
    _TABLE.c.ref == bindparam("r"),
    _TABLE.c.bucket == bindparam("b"),
    _TABLE.c.segment == bindparam("g"),
)
_INSERT = insert(_TABLE)
_UPDATE = update(_TABLE).where(*_KEY).values(data=bindparam("d"))
_DELETE = delete(_TABLE).where(*_KEY)


def write(
    svc: Services,
    db: Db,
    conversation_id: str,
    drop: Iterable[int] = (),
    entries: Iterable[Entry] = (),
    ref: int | None = None,
    times: Mapping[int, datetime] | None = None,
) -> int:
    """Make the postings of the seqs in `drop` and in `entries` exactly those of the entries'
    texts (a seq only in `drop` ends with none, and loses its time), in the caller's
    transaction. Returns the tokens written. `ref`: the conversation's index row, when the
    caller has locked it. `times`: seq -> created_at of entries, for the segments' times rows
    (an entry without one keeps the time stored, e.g. an edit's). Nothing when the index is
    off (`PARLEY_SEARCH_INDEX`)."""
    if not svc.settings.search_index:
        return 0
    change = Change(set(drop))
    for seq, dk_id, text in entries:
        change.add(svc, seq, dk_id, text, (times or {}).get(seq))
    if not change.seqs:
        return 0
    conn = connection_of(db)
    if ref is None:
        ref = lock(conn, conversation_id, create=bool(change.adds))
    if ref is None:
        return 0
    rewrite(conn, {ref: change})
    return change.written


class Change:
    """What to make of some seqs of one conversation's index: `seqs` end with exactly the
    tokens in `adds` (none when absent), and the times in `stamps` (kept when an added seq
    has none, cleared for a seq left without tokens)."""

    def __init__(self, drop: set[int] | None = None) -> None:
        self.seqs: set[int] = drop or set()
        self.adds: dict[int, set[int]] = defaultdict(set)  # seq -> tokens
        self.stamps: dict[int, int] = {}  # seq -> microseconds
        self.written = 0

    def add(self, svc: Services, seq: int, dk_id: str, text: str, at: datetime | None) -> None:
        """The message's tokens under its data key's search key (raises MissingKeyError)."""
        found = tokens(index_key(svc, dk_id), index_terms(text))
        self.seqs.add(seq)
        self.adds[seq] |= found
        self.written += len(found)
        if at is not None:
            self.stamps[seq] = postings.micros(at)


def rewrite(conn: Connection, changes: Mapping[int, Change]) -> None:
    """Apply each index ref's change (see `planned`)."""
    planned(conn, changes).apply(conn)


@dataclass
class Writes:
    """The rows a change stores: nothing is written until `apply`, so a caller can tell a
    change that cannot be made from one that failed half-way."""

    inserts: list[dict[str, object]] = field(default_factory=list)
    updates: list[dict[str, object]] = field(default_factory=list)
    deletes: list[dict[str, object]] = field(default_factory=list)
    # What they were planned on: the (ref, bucket, segment) keys read, and the rows found.
    keys: list[tuple[int, int, int]] = field(default_factory=list)
    found: dict[tuple[int, int, int], bytes] = field(default_factory=dict)

    def apply(self, conn: Connection) -> None:
        """One call each for inserts, updates and deletes: the inserts one multi-row INSERT
        (on PostgreSQL by models/db.make_engine's setting), the others an executemany."""
        if self.inserts:
            conn.execute(_INSERT, self.inserts)
        if self.updates:
            conn.execute(_UPDATE, self.updates)
        if self.deletes:
            conn.execute(_DELETE, self.deletes)


def planned(conn: Connection, changes: Mapping[int, Change]) -> Writes:
    """The writes that make each index ref's change: one read of the rows of the segments
    they touch (their bucket, tail and times rows), whatever the number of conversations."""
    clears: dict[int, dict[int, set[int]]] = {}  # ref -> segment -> offsets to clear
    for ref, change in changes.items():
        clear: dict[int, set[int]] = defaultdict(set)
        for seq in change.seqs:
            segment, offset = postings.place(seq)
            clear[segment].add(offset)
        clears[ref] = clear
    keys = [(r, b, g) for r, clear in clears.items() for g in clear for b in _BUCKETS]
    old: dict[int, dict[tuple[int, int], bytes]] = {ref: {} for ref in changes}
    out = Writes(keys=keys)
    for r, b, g, data in rows_at(conn, keys):
        old[r][b, g] = out.found[r, b, g] = data
    for ref, change in changes.items():
        for (b, g), data in _new_rows(old[ref], clears[ref], change).items():
            key: dict[str, object] = {"r": ref, "b": b, "g": g}
            if (b, g) not in old[ref]:
                if data:
                    out.inserts.append({"ref": ref, "bucket": b, "segment": g, "data": data})
            elif not data:
                out.deletes.append(key)
            elif data != old[ref][b, g]:
                out.updates.append({**key, "d": data})
    return out


_BUCKETS = range(postings.TAIL + 1)  # a segment's rows: its buckets, times and tail


def unchanged(conn: Connection, writes: Writes) -> bool:
    """Whether the rows `writes` were planned on are as they were read (one read)."""
    return {(r, b, g): d for r, b, g, d in rows_at(conn, writes.keys)} == writes.found


def rows_at(db: Db, keys: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int, bytes]]:
    """(ref, bucket, segment, data) of the postings rows at these (ref, bucket, segment) keys
    that exist: one statement, however many (the index's writers and the search's times
    read)."""
    if not keys:
        return []
    conn = connection_of(db)
    if conn.dialect.name == "postgresql":
        columns = [list(c) for c in zip(*keys, strict=True)]  # refs, buckets, segments
        driver: Any = conn.connection.driver_connection
        with driver.cursor(binary=True) as cursor:
            cursor.execute(_AT_PG, columns)
            return [tuple(row) for row in cursor.fetchall()]
    packed = json.dumps([r << 29 | b << 24 | g for r, b, g in keys])
    return [tuple(row) for row in conn.execute(_AT_SQLITE, {"keys": packed})]


def _new_rows(
    old: Mapping[tuple[int, int], bytes], clear: Mapping[int, set[int]], change: Change
) -> dict[tuple[int, int], bytes]:
    """The rows to store for one ref (b"": delete): the cleared offsets' old postings out (from
    the bucket rows and the tail row), the change's tokens in (to the tail row, folded into the
    bucket rows when full), the times rows updated."""
    seqs, adds, stamps = change.seqs, change.adds, change.stamps
    written: dict[tuple[int, int], bytes] = {}
    for g in clear:
        data = old.get((postings.TIMES, g))
        values = postings.times(data)
        for seq in seqs:
            segment, offset = postings.place(seq)
            if segment == g:
                values[offset] = stamps.get(seq, values[offset] if seq in adds else 0)
        if any(values):
            new = postings.encode_times(values)
            if new != data:
                written[postings.TIMES, g] = new
        elif data is not None:
            written[postings.TIMES, g] = b""
    rows: dict[tuple[int, int], postings.Postings] = {}
    changed: set[tuple[int, int]] = set()
    for (b, g), data in old.items():
        if b == postings.TIMES:
            continue
        if any(postings.holds(data, o) for o in clear[g]):
            rows[b, g] = postings.decode(data)
            if postings.without(rows[b, g], clear[g]):
                changed.add((b, g))

    def loaded(where: tuple[int, int]) -> postings.Postings:
        if where not in rows:
            rows[where] = postings.decode(old[where]) if where in old else {}
        return rows[where]

    tails: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for seq, found in adds.items():
        segment, offset = postings.place(seq)
        for t in found:
            tails[segment][t].add(offset)
    for g, additions in tails.items():  # new postings go to the segment's tail row
        tail = loaded((postings.TAIL, g))
        if postings.merge(tail, additions):
            changed.add((postings.TAIL, g))
        if len(postings.held(tail)) >= postings.TAIL_MESSAGES:  # fold it into the buckets
            folded: dict[int, dict[int, bytes]] = defaultdict(dict)
            for t, offsets in tail.items():
                folded[postings.bucket(t)][t] = offsets
            for b, moved in folded.items():
                postings.merge(loaded((b, g)), moved)
                changed.add((b, g))
            tail.clear()
    for where in changed:
        written[where] = postings.encode(rows[where]) if rows[where] else b""
    return written


def replace(
    svc: Services, session: Session, conversation_id: str, seq: int, dk_id: str, text: str
) -> int:
    """Make the message's tokens those of `text` under `dk_id`'s search key; returns how many."""
    return write(svc, session, conversation_id, entries=[(seq, dk_id, text)])


def remove(session: Session, conversation_id: str, seq: int) -> None:
    """Drop a message's tokens (a soft delete, an erasure)."""
    forget(session, conversation_id, [seq])


def forget(session: Session, conversation_id: str, seqs: Iterable[int]) -> None:
    """Drop the tokens of these messages of one conversation."""
    seqs = set(seqs)
    if seqs:
        ref = lock(session, conversation_id, create=False)
        if ref is not None:
            rewrite(session.connection(), {ref: Change(seqs)})


def forget_messages(session: Session, message_ids: Sequence[str]) -> None:
    """Drop the tokens of these messages (before their rows are deleted: the purge)."""
    by_conv: dict[str, set[int]] = defaultdict(set)
    for cid, seq in session.execute(
        select(Message.conversation_id, Message.seq).where(Message.id.in_(list(message_ids)))
    ):
        by_conv[cid].add(seq)
    for cid in sorted(by_conv):  # one lock order for every writer of several conversations
        forget(session, cid, by_conv[cid])


def drop_conversation(session: Session, conversation_id: str) -> None:
    """Drop a conversation's whole index (it is being deleted; its keys are shredded)."""
    ref = lock(session, conversation_id, create=False)
    if ref is not None:
        session.execute(delete(SearchPostings).where(SearchPostings.ref == ref))
        session.execute(delete(SearchConversation).where(SearchConversation.ref == ref))
