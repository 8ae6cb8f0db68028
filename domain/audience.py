"""Who hears about a message while away: the rules in-app notifications (tasks/push.py) and
pushes (domain/push_delivery.py) both apply, the second time right before sending."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from models import Message, Participant


def mentioned(user_id: str, meta: Mapping[str, Any] | None, text: str | None) -> bool:
    """A message mentions a user when its `metadata.mentions` lists their id, or its text has
    `@<their id>` as a whole token (the platform's client decides how names map to ids)."""
    listed = (meta or {}).get("mentions")
    if isinstance(listed, list) and user_id in listed:
        return True
    if not text or "@" not in text:
        return False
    token = re.compile(r"(?<![\w@])@" + re.escape(user_id) + r"(?![\w-]|\.\w)")
    return token.search(text) is not None


def skip_reason(
    part: Participant | None,
    msg: Message,
    text_of: Callable[[], str | None],
    now: datetime,
) -> str | None:
    """Why `part` should not hear about `msg` now, or None when they should.

    `text_of` opens the text only when a mentions-only level needs it.
    """
    if part is None or part.left_at is not None:
        return "not a member"
    if msg.deleted_at is not None:
        return "deleted"
    if msg.expired_at is not None:
        return "expired"  # hidden by retention
    if msg.state != "delivered":
        return "not delivered"
    if part.user_id == msg.sender_id:
        return "own message"
    if part.read_seq >= msg.seq:
        return "read"
    if part.muted_until is not None and part.muted_until > now:
        return "muted"
    if part.notification_level == "none":
        return "level none"
    if part.notification_level == "mentions" and not mentioned(part.user_id, msg.meta, text_of()):
        return "not mentioned"
    return None
