"""The index's half of a search: which messages may hold the query's terms, and when.

The query's required terms are hashed under the search key of every data key in scope; one read
fetches the postings rows of their buckets and the tail rows (every segment), and the offsets of
the messages holding all of them are intersected in memory; a second read fetches the times rows
of the segments that have candidates, so that domain/search/query.py can take them newest first.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.services import Services
from domain.search import postings
from domain.search.index import index_key, rows_at, token

Candidate = tuple[int, str, int]  # (created_at in microseconds, 0 when unknown; cid; seq)


def candidates(
    svc: Services, session: Session, keys: list[tuple[str, int, str]], needs: list[tuple[str, str]]
) -> list[Candidate]:
    """(created_at, conversation, seq) of every message whose postings hold all of `needs`,
    under any data key of its conversation. `keys`: (conversation, index ref, data key id)."""
    refs: dict[int, str] = {}
    wanted: list[tuple[int, list[int]]] = []  # (ref, the needs' tokens under one data key)
    pairs: set[tuple[int, int]] = set()
    for cid, ref, dk_id in keys:
        try:
            key = index_key(svc, dk_id)
        except MissingKeyError:  # shredded meanwhile
            continue
        refs[ref] = cid
        ts = [token(key, need) for need in needs]
        wanted.append((ref, ts))
        pairs.add((ref, postings.TAIL))
        pairs.update((ref, postings.bucket(t)) for t in ts)
    if not pairs:
        return []
    rows: dict[tuple[int, int, int], bytes] = {}  # (ref, bucket, segment) -> data
    segments: dict[int, set[int]] = {}  # ref -> the segments any row was read for
    for ref, b, g, data in _rows(session, sorted(pairs)):
        rows[ref, b, g] = data
        segments.setdefault(ref, set()).add(g)
    found: dict[tuple[int, int], bytes | set[int]] = {}  # (ref, segment) -> offsets
    find, tail = postings.find, postings.TAIL
    for ref, ts in wanted:
        for g in segments.get(ref, ()):
            held: bytes | set[int] | None = None
            for t in ts:
                row = rows.get((ref, t & (postings.BUCKETS - 1), g))
                last = rows.get((ref, tail, g))
                here: bytes | set[int] = find(row, t) if row is not None else b""
                if last is not None and (more := find(last, t)):
                    here = set(here).union(more) if here else more
                held = here if held is None else set(held).intersection(here)
                if not held:
                    break
            if held:  # a conversation with several data keys: the union of their hits
                found[ref, g] = set(found[ref, g]).union(held) if (ref, g) in found else held
    if not found:
        return []
    at = [(ref, postings.TIMES, g) for ref, g in sorted(found)]
    stamps = {(ref, g): data for ref, _, g, data in rows_at(session, at)}
    out: list[Candidate] = []
    for (ref, g), offsets in found.items():
        values = postings.stamps(stamps.get((ref, g)))
        base = g * postings.SEGMENT_SEQS
        cid = refs[ref]
        out.extend([(values[o], cid, base + o) for o in offsets])
    return out


# Postings rows by (ref, bucket), every segment, the pairs in one parameter (a constant
# statement, whatever their number), each pair a primary-key prefix lookup. On SQLite a pair
# is one integer, ref (int4) << 5 | bucket; on PostgreSQL the read goes through the driver's
# cursor with binary results, as index.rows_at's does.
_ROWS_SQLITE = text(
    "SELECT p.ref, p.bucket, p.segment, p.data FROM json_each(:pairs) AS k"
    " JOIN search_postings AS p ON p.ref = k.value >> 5 AND p.bucket = k.value & 31"
)
_ROWS_PG = (
    "SELECT p.ref, p.bucket, p.segment, p.data"
    " FROM unnest(%s::int[], %s::int[]) AS k(ref, bucket)"
    " JOIN search_postings AS p ON p.ref = k.ref AND p.bucket = k.bucket"
)


def _rows(session: Session, pairs: list[tuple[int, int]]) -> Any:
    """(ref, bucket, segment, data) of the postings rows of (ref, bucket) `pairs`."""
    if session.get_bind().dialect.name == "postgresql":
        driver: Any = session.connection().connection.driver_connection
        with driver.cursor(binary=True) as cursor:
            cursor.execute(_ROWS_PG, [[a for a, _ in pairs], [b for _, b in pairs]])
            return cursor.fetchall()
    return session.execute(_ROWS_SQLITE, {"pairs": json.dumps([a << 5 | b for a, b in pairs])})
