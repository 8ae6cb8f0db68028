"""A group-commit batch's seqs: each conversation's `last_seq` moved on by its posts' count.

Consecutive and gap-free in arrival order: the conversation row's lock on PostgreSQL, SQLite's
`BEGIN IMMEDIATE` there. One statement per conversation cost more than the rows it wrote when a
batch spans several (a web process under load batches posts to many conversations): on
PostgreSQL the UPDATEs share one round trip (psycopg's pipeline mode, which its executemany
uses) and still run one after the other in id order, so two writers never wait on each other
in a cycle; on SQLite, where one writer holds the whole file anyway, they are one UPDATE over a
JSON object of the counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy import text as sql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoResultFound

from models import Conversation

if TYPE_CHECKING:
    import psycopg

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
_RESERVE_PG: dict[str, str] = {}  # _RESERVE as psycopg's SQL, compiled once per process


def reserve(
    conn: Connection, counts: Mapping[str, int], now: datetime
) -> dict[str, tuple[int, str | None]]:
    """For each conversation, in `counts`' order (by id), its last seq once `counts[cid]`
    more are reserved, and its data key. Raises NoResultFound when a conversation is gone."""
    if len(counts) > 1 and conn.dialect.name == "sqlite":
        got = {
            cid: (last, dk)
            for cid, last, dk in conn.execute(
                _RESERVE_SQLITE, {"counts": json.dumps(counts), "at": now}
            )
        }
        if len(got) < len(counts):
            missing = next(cid for cid in counts if cid not in got)
            raise NoResultFound(f"conversation {missing} not found")
        return {cid: got[cid] for cid in counts}
    params = [{"conv": cid, "n": n, "at": now} for cid, n in counts.items()]
    if len(params) > 1 and conn.dialect.name == "postgresql":
        rows = _pipelined(conn, params)
    else:
        rows = [conn.execute(_RESERVE, p).one() for p in params]
    return {cid: (row[0], row[1]) for cid, row in zip(counts, rows, strict=True)}


def _pipelined(conn: Connection, params: list[dict[str, Any]]) -> list[Any]:
    sql_text = _RESERVE_PG.get(conn.dialect.name)
    if sql_text is None:
        sql_text = _RESERVE_PG[conn.dialect.name] = str(_RESERVE.compile(dialect=conn.dialect))
    rows: list[Any] = []
    raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    with raw.cursor() as cur:
        cur.executemany(sql_text, params, returning=True)
        while True:
            row = cur.fetchone()
            if row is None:  # the conversation is gone: as `.one()` would fail
                raise NoResultFound(f"conversation {params[len(rows)]['conv']} not found")
            rows.append(row)
            if not cur.nextset():
                return rows
