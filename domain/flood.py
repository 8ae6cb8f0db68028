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

from core.services import Services

PREFIX = "parley:flood:"
LABEL = "flood"
MEMO = ":first"  # beside each set: message id → its count when first recorded


# Records a batch of posts in one command, in order (a batch may repeat a key: the same text
# from one sender to several of its conversations). A post's count is the number of
# conversations the text reached within the window when the post was first recorded; it is
# kept per message (the memo hash beside each set), so a post judged again gets its first
# answer: a judgement made before SQLite's write lock may be redone under it after other
# copies were recorded, and two tasks may judge one post. KEYS: each post's set, then its
# memo; ARGV: now, the oldest score still in the window, the window in seconds, then each
# post's conversation and message id.
_RECORD = """
local now, oldest, window = ARGV[1], ARGV[2], ARGV[3]
local counts = {}
for i = 1, #KEYS / 2 do
  local set, memo, mid = KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 + 2 * i]
  local first = redis.call('HGET', memo, mid)
  if first then
    counts[i] = tonumber(first)
  else
    redis.call('ZADD', set, now, ARGV[2 + 2 * i])
    redis.call('ZREMRANGEBYSCORE', set, 0, oldest)
    counts[i] = redis.call('ZCARD', set)
    redis.call('HSET', memo, mid, counts[i])
    redis.call('EXPIRE', set, window)
    redis.call('EXPIRE', memo, window)
  end
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
    svc: Services, posts: Sequence[tuple[str | None, str, str, str]]
) -> list[bool]:
    """Record (sender, text, conversation, message id) posts in order, in one round trip (one
    script run, which costs far less to send than several commands per post); for each, True
    when the same text from that sender had reached the flood threshold of conversations
    when the post was first recorded (a post recorded again gets the same answer)."""
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
    now = time.time()
    window = settings.flood_window_s
    keys = []
    for i in checked:
        key = f"{PREFIX}{posts[i][0]}:{fingerprint(posts[i][1])}"
        keys += [key, key + MEMO]
    each = [arg for i in checked for arg in posts[i][2:]]
    counts = svc.redis.register_script(_RECORD)(keys=keys, args=[now, now - window, window, *each])
    for i, n in zip(checked, counts, strict=True):
        flooded[i] = int(n) >= settings.flood_conversations
    return flooded
