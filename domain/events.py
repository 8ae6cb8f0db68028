"""Durable events for user streams, routed through the outbox so none is lost on a crash."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from core.ids import new_id
from domain import outbox

PUBLISH_TASK = "tasks.fanout.publish_event"


def emit(session: Session, etype: str, data: Mapping[str, Any], users: Sequence[str]) -> None:
    """Queue `etype` for `users`' streams; published once, after this transaction commits."""
    if not users:
        return
    key = "ev:" + new_id()
    outbox.add(session, PUBLISH_TASK, [key, etype, dict(data), list(users)], ref_id=key)
