"""Migration e5b8f0a3c4d6 (the blind index as posting lists): an existing install's old index is
dropped, and the index stage is queued again, through the outbox, for the messages it must find
again (moderated, with text, not deleted or expired), per conversation, 100 to a row."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, create_engine, insert, inspect, select

from core.ids import new_id
from domain.search.stage import INDEX_TASK
from models import Conversation, Message, Outbox
from models.migrate import upgrade

BEFORE = "d4a7e9c1f2b3"


def test_upgrading_requeues_the_index_stage_for_what_search_must_find_again(
    database_url: str,
) -> None:
    upgrade(database_url, BEFORE)
    engine = create_engine(database_url)
    big, small, empty = new_id(), new_id(), new_id()
    rows = []
    for seq in range(1, 151):  # 150 searchable messages: two outbox rows
        rows.append({"id": new_id(), "conversation_id": big, "seq": seq, "text_ct": b"x"})
    kept = {"id": new_id(), "conversation_id": small, "seq": 1, "text_ct": b"x"}
    skipped = [
        {"id": new_id(), "conversation_id": small, "seq": 2, "text_ct": None},  # no text: deleted
        {"id": new_id(), "conversation_id": small, "seq": 3, "text_ct": b"x", "action": None},
    ]
    with engine.begin() as conn:
        for cid in (big, small, empty):
            conn.execute(insert(cast(Table, Conversation.__table__)).values(id=cid, type="group"))
        for row in [*rows, kept, *skipped]:
            action = row.pop("action", "allow")
            conn.execute(
                insert(cast(Table, Message.__table__)).values(
                    **row, key_id="dk", moderation_action=action
                )
            )
    upgrade(database_url)
    assert "search_tokens" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        queued = [
            (ref, args)
            for ref, args in conn.execute(
                select(Outbox.ref_id, Outbox.args)
                .where(Outbox.task == INDEX_TASK)
                .order_by(Outbox.id)
            )
        ]
    engine.dispose()
    by_conv: dict[str, list[list[str]]] = {}
    for ref, (cid, ids) in queued:
        assert ref == ids[0]
        by_conv.setdefault(cid, []).append(ids)
    ordered = [r["id"] for r in rows]
    assert by_conv == {big: [ordered[:100], ordered[100:]], small: [[kept["id"]]]}
