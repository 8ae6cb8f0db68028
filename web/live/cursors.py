"""Delivered cursors: when a `message.new` is written to a socket, its user's `delivered_seq`
in that conversation moves up to the message's seq (never down), and the sender's `status`
becomes `delivered`.

Writes are batched: the hub's flusher saves what accumulated every `DELIVERED_FLUSH_S`, in one
transaction (domain.live.save_delivered), and a batch that fails is kept for the next one.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from core.services import Services
from domain import live
from web.live.connection import Connection

logger = logging.getLogger(__name__)

DELIVERED_FLUSH_S = 0.25


class DeliveredCursors:
    """(conversation, user) → the highest seq written to one of the user's sockets, unsaved."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._pending: dict[tuple[str, str], int] = {}

    def note(self, conn: Connection, conversation_id: str, seq: int) -> None:
        """A socket of `conn`'s user got message `seq` of the conversation (the writer's
        callback)."""
        key = (conversation_id, conn.user_id)
        if self._pending.get(key, 0) < seq:
            self._pending[key] = seq

    def flush(self) -> None:
        """Move participants' delivered cursors forward (never back): one UPDATE per
        conversation and seq, so a message fanned out to 1,000 sockets costs one statement."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            with self.svc.Session.begin() as s:
                live.save_delivered(s, batch)
        except SQLAlchemyError:
            logger.warning("delivered cursors not saved; retrying", exc_info=True)
            for key, seq in batch.items():
                if self._pending.get(key, 0) < seq:
                    self._pending[key] = seq
