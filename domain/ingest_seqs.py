"""A group-commit batch's seqs: each conversation's `last_seq` moved on by its posts' count.

Consecutive and gap-free in arrival order: the conversation row's lock on PostgreSQL, SQLite's
`BEGIN IMMEDIATE` there. One statement per conversation cost more than the rows it wrote when a
batch spans several (a web process under load batches posts to many conversations), so a batch
over several conversations takes one statement on both databases: on PostgreSQL it locks the
rows first, in id order, so two writers never wait on each other in a cycle; on SQLite, where
one writer holds the whole file anyway, it is one UPDATE over a JSON object of the counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import cast

from sqlalchemy import ARRAY, Integer, String, Table, bindparam, update
from sqlalchemy import text as sql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoResultFound

from models import Conversation

_conv = cast(Table, Conversation.__table__)

# A conversation's seqs for a batch: `n` more, the last of them returned.
_RESERVE = (
    update(_conv)
    .where(_conv.c.id == bindparam("conv"))
    .values(last_seq=_conv.c.last_seq + bindparam("n"), last_activity_at=bindparam("at"))
    .returning(_conv.c.last_seq, _conv.c.data_key_id)
)
# Every conversation of the batch at once: `counts` is {conversation id: n}.
_RESERVE_SQLITE = sql(
    "UPDATE conversations SET last_seq = conversations.last_seq + k.value,"
    " last_activity_at = :at FROM json_each(:counts) AS k WHERE conversations.id = k.key"
    " RETURNING conversations.id, conversations.last_seq, conversations.data_key_id"
).bindparams(bindparam("at", type_=_conv.c.last_activity_at.type))
# The same on PostgreSQL: `ids` and `ns` side by side. The materialized CTE takes the row
# locks in id order (its sort runs before the locking) before the UPDATE writes any row.
_RESERVE_PG = sql(
    "WITH k AS (SELECT * FROM unnest(:ids, :ns) AS k(id, n)),"
    " locked AS MATERIALIZED (SELECT conversations.id FROM conversations JOIN k USING (id)"
    " ORDER BY conversations.id FOR UPDATE OF conversations)"
    " UPDATE conversations SET last_seq = conversations.last_seq + k.n, last_activity_at = :at"
    " FROM k JOIN locked USING (id) WHERE conversations.id = k.id"
    " RETURNING conversations.id, conversations.last_seq, conversations.data_key_id"
).bindparams(
    bindparam("ids", type_=ARRAY(String)),
    bindparam("ns", type_=ARRAY(Integer)),
    bindparam("at", type_=_conv.c.last_activity_at.type),
)


def reserve(
    conn: Connection, counts: Mapping[str, int], now: datetime
) -> dict[str, tuple[int, str | None]]:
    """For each conversation of `counts`, its last seq once `counts[cid]` more are reserved,
    and its data key. Raises NoResultFound when a conversation is gone."""
    if len(counts) > 1:
        if conn.dialect.name == "sqlite":
            params: dict[str, object] = {"counts": json.dumps(counts), "at": now}
            stmt = _RESERVE_SQLITE
        else:
            params = {"ids": list(counts), "ns": list(counts.values()), "at": now}
            stmt = _RESERVE_PG
        got = {cid: (last, dk) for cid, last, dk in conn.execute(stmt, params)}
        if len(got) < len(counts):
            missing = next(cid for cid in counts if cid not in got)
            raise NoResultFound(f"conversation {missing} not found")
        return {cid: got[cid] for cid in counts}
    ((cid, n),) = counts.items()
    row = conn.execute(_RESERVE, {"conv": cid, "n": n, "at": now}).one()
    return {cid: (row[0], row[1])}
