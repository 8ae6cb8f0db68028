"""Migration a6c2d8e4f1b7: the conversation list's preview (the newest delivered message) moves
from the conversation's row to its delivery cursor's, keeping every conversation's value and
every row that references the conversation; and back on downgrade."""

from __future__ import annotations

from typing import cast

from alembic import command
from sqlalchemy import Table, create_engine, insert, inspect, text

from core.ids import new_id
from models import Conversation, DeliveryCursor, Participant, User
from models.migrate import alembic_config, upgrade

BEFORE = "e5b8f0a3c4d6"


def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_the_preview_moves_to_the_delivery_cursor_and_back(database_url: str) -> None:
    upgrade(database_url, BEFORE)
    with_last, without = new_id(), new_id()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(cast(Table, User.__table__)).values(id="u1"))
        for cid, last in ((with_last, "m-newest"), (without, None)):
            conn.execute(insert(cast(Table, Conversation.__table__)).values(id=cid, type="direct"))
            conn.execute(
                text("UPDATE conversations SET last_message_id = :last WHERE id = :c"),
                {"c": cid, "last": last},
            )
            conn.execute(insert(cast(Table, DeliveryCursor.__table__)).values(conversation_id=cid))
            conn.execute(
                insert(cast(Table, Participant.__table__)).values(conversation_id=cid, user_id="u1")
            )
    engine.dispose()

    upgrade(database_url)
    assert "last_message_id" not in _columns(database_url, "conversations")
    engine = create_engine(database_url)
    with engine.connect() as conn:
        moved = dict(
            conn.execute(
                text("SELECT conversation_id, last_message_id FROM delivery_cursors")
            ).all()
        )
        members = conn.execute(text("SELECT count(*) FROM participants")).scalar()
    engine.dispose()
    assert moved == {with_last: "m-newest", without: None}
    assert members == 2  # nothing that references a conversation went with the column

    command.downgrade(alembic_config(database_url), BEFORE)
    assert "last_message_id" not in _columns(database_url, "delivery_cursors")
    engine = create_engine(database_url)
    with engine.connect() as conn:
        back = dict(conn.execute(text("SELECT id, last_message_id FROM conversations")).all())
    engine.dispose()
    assert back == {with_last: "m-newest", without: None}
