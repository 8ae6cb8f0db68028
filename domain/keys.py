"""Per-conversation data keys: created on first use, wrapped by the current master key."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.crypto import new_data_key, wrap_data_key
from core.ids import new_id
from core.services import Services
from models import Conversation, DataKey


def message_aad(message_id: str) -> str:
    """What a message's text is sealed to: a ciphertext copied to another row does not open."""
    return f"msg:{message_id}"


def edit_aad(message_id: str) -> str:
    """What the text an edit replaced is sealed to (the message's edit history)."""
    return f"edit:{message_id}"


def create_data_key(svc: Services, session: Session, conversation_id: str | None) -> str:
    dk_id = "dk_" + new_id()
    dek = new_data_key()
    kid, wrapped = wrap_data_key(svc.keyring.master, dk_id, dek)
    session.add(DataKey(id=dk_id, conversation_id=conversation_id, master_kid=kid, wrapped=wrapped))
    svc.keyring.remember(dk_id, dek)
    return dk_id


def conversation_key(svc: Services, session: Session, conv: Conversation) -> str:
    """The data key new text in `conv` is sealed with (created lazily, inside the caller's tx)."""
    if conv.data_key_id is None:
        conv.data_key_id = create_data_key(svc, session, conv.id)
    return conv.data_key_id


def rewrap_batch(svc: Services, session: Session, limit: int) -> int:
    """Re-wrap up to `limit` data keys still under an older master key. Returns how many."""
    from core.crypto import unwrap_data_key

    master = svc.keyring.master
    rows = session.scalars(
        select(DataKey).where(DataKey.master_kid != master.current_kid).limit(limit)
    ).all()
    for dk in rows:
        dek = unwrap_data_key(master, dk.id, dk.master_kid, dk.wrapped)
        kid, wrapped = wrap_data_key(master, dk.id, dek)
        session.execute(
            update(DataKey).where(DataKey.id == dk.id).values(master_kid=kid, wrapped=wrapped)
        )
    return len(rows)


def stale_key_count(svc: Services, session: Session) -> int:
    from sqlalchemy import func

    current = svc.keyring.master.current_kid
    return (
        session.scalar(
            select(func.count()).select_from(DataKey).where(DataKey.master_kid != current)
        )
        or 0
    )
