"""Crypto-shredding: deleting data keys makes everything sealed under them unreadable.

Deleting the rows is not enough while processes still hold the unwrapped keys in their caches,
so every shred is announced: on a Redis channel for the listeners (`KeyForgetter`), and in a
sorted set that a listener which was disconnected replays when it reconnects.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from redis.exceptions import RedisError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.services import Services
from models import DataKey

logger = logging.getLogger(__name__)

SHRED_CHANNEL = "parley:keys:shredded"
SHREDDED_KEY = "parley:keys:shredded:recent"  # sorted set id → time, for listeners catching up
SHREDDED_KEEP_S = 24 * 3600


def shred_conversation_keys(session: Session, cid: str) -> list[str]:
    """Delete every data key of a conversation, in the caller's transaction.

    From the commit on, its message text, edit history and attachment files cannot be opened
    by anyone holding only the database (backups: see docs/retention.md). Returns the key ids,
    which the caller must `forget_keys` after the commit."""
    ids = list(session.scalars(select(DataKey.id).where(DataKey.conversation_id == cid)))
    if ids:
        session.execute(delete(DataKey).where(DataKey.id.in_(ids)))
    return ids


def forget_keys(svc: Services, dk_ids: Sequence[str]) -> None:
    """Drop shredded keys from this process's key cache and tell every other process.

    Other processes learn it from the `parley:keys:shredded` channel (see KeyForgetter); the
    sorted set lets a listener that was disconnected catch up on what it missed."""
    if not dk_ids:
        return
    for dk in dk_ids:
        svc.keyring.forget(dk)
    now = time.time()
    try:
        pipe = svc.redis.pipeline()
        pipe.zadd(SHREDDED_KEY, dict.fromkeys(dk_ids, now))
        pipe.zremrangebyscore(SHREDDED_KEY, 0, now - SHREDDED_KEEP_S)
        pipe.publish(SHRED_CHANNEL, json.dumps(list(dk_ids)))
        pipe.execute()
    except RedisError:
        logger.warning(
            "could not announce %d shredded key(s); other caches keep them until restart",
            len(dk_ids),
        )
