"""Flood detection: the same text from one sender in many conversations within a window.

Spammers and platform-leavers paste one message everywhere. The text is never stored: a keyed
hash (HMAC under a key derived from the current master key) names it in Redis, with a sorted
set of the conversations it went to, trimmed to the window.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

import redis

from core.services import Services

PREFIX = "parley:flood:"
LABEL = "flood"


def _fingerprint(svc: Services, text: str) -> str:
    master = svc.keyring.master.get(svc.keyring.master.current_kid)
    key = hmac.new(master, b"parley-flood-key", hashlib.sha256).digest()
    normal = " ".join(text.lower().split())
    return hmac.new(key, normal.encode(), hashlib.sha256).hexdigest()[:32]


def record_and_check(svc: Services, posts: Sequence[tuple[str | None, str, str]]) -> list[bool]:
    """Record (sender, text, conversation) posts in order, in one round trip; for each, True
    when the same text from that sender reached the flood threshold of conversations."""
    settings = svc.settings
    checked = (
        [i for i, (sender, text, _) in enumerate(posts) if sender and text.strip()]
        if settings.flood_conversations > 0
        else []
    )
    flooded = [False] * len(posts)
    if not checked:
        return flooded
    now = time.time()
    pipe: redis.client.Pipeline = svc.redis.pipeline(transaction=True)
    for i in checked:
        sender, text, conversation_id = posts[i]
        key = f"{PREFIX}{sender}:{_fingerprint(svc, text)}"
        pipe.zadd(key, {conversation_id: now})
        pipe.zremrangebyscore(key, 0, now - settings.flood_window_s)
        pipe.zcard(key)
        pipe.expire(key, settings.flood_window_s)
    replies = pipe.execute()
    for n, i in enumerate(checked):
        flooded[i] = int(replies[4 * n + 2]) >= settings.flood_conversations
    return flooded
