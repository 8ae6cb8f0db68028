"""Flood detection: the same text from one sender in many conversations within a window.

Spammers and platform-leavers paste one message everywhere. The text is never stored: a keyed
hash (HMAC under a key derived from the current master key) names it in Redis, with a sorted
set of the conversations it went to, trimmed to the window.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from core.services import Services

PREFIX = "parley:flood:"
LABEL = "flood"


# Records a batch of posts in one command (a batch may repeat a key: the same text from one
# sender to several of its conversations). Each conversation keeps the time of its first copy
# (NX), and a post's count is its conversation's rank by that time: the conversations the text
# reached up to and including this one. So a post judged twice gets the same answer (a judgement
# made before SQLite's write lock may be redone under it, and two tasks may judge one post), and
# the order batches run in does not matter. KEYS: each post's set; ARGV: the oldest score still
# in the window, the window in seconds, then each post's conversation and time.
_RECORD = """
local oldest, window = ARGV[1], ARGV[2]
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. oldest)
  redis.call('ZADD', key, 'NX', ARGV[2 + 2 * i], ARGV[1 + 2 * i])
  redis.call('EXPIRE', key, window)
end
local counts = {}
for i, key in ipairs(KEYS) do
  local rank = redis.call('ZRANK', key, ARGV[1 + 2 * i])
  counts[i] = rank and rank + 1 or 0
end
return counts
"""


def _fingerprinter(svc: Services) -> Callable[[str], str]:
    master = svc.keyring.master.get(svc.keyring.master.current_kid)
    key = hmac.new(master, b"parley-flood-key", hashlib.sha256).digest()

    def fingerprint(text: str) -> str:
        normal = " ".join(text.lower().split())
        return hmac.new(key, normal.encode(), hashlib.sha256).hexdigest()[:32]

    return fingerprint


def record_and_check(
    svc: Services, posts: Sequence[tuple[str | None, str, str, datetime]]
) -> list[bool]:
    """Record (sender, text, conversation, posted at) posts in one round trip (one script run,
    which costs far less to send than several commands per post); for each, True when the
    same text from that sender had reached the flood threshold of conversations by the time
    it was posted, counting the copies recorded so far."""
    settings = svc.settings
    checked = (
        [i for i, (sender, text, _, _) in enumerate(posts) if sender and text.strip()]
        if settings.flood_conversations > 0
        else []
    )
    flooded = [False] * len(posts)
    if not checked:
        return flooded
    fingerprint = _fingerprinter(svc)
    window = settings.flood_window_s
    keys = [f"{PREFIX}{posts[i][0]}:{fingerprint(posts[i][1])}" for i in checked]
    each = [arg for i in checked for arg in (posts[i][2], posts[i][3].timestamp())]
    counts = svc.redis.register_script(_RECORD)(
        keys=keys, args=[time.time() - window, window, *each]
    )
    for i, n in zip(checked, counts, strict=True):
        flooded[i] = int(n) >= settings.flood_conversations
    return flooded
