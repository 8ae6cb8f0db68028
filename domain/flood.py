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


# Records a batch of posts in one command, in order (a batch may repeat a key: the same text
# from one sender to several of its conversations). KEYS: each post's set; ARGV: now, the
# oldest score still in the window, the window in seconds, then each post's conversation.
# Returns each post's count of conversations within the window, its own included.
_RECORD = """
local now, oldest, window = ARGV[1], ARGV[2], ARGV[3]
local counts = {}
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[3 + i])
  redis.call('ZREMRANGEBYSCORE', key, 0, oldest)
  counts[i] = redis.call('ZCARD', key)
  redis.call('EXPIRE', key, window)
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


def record_and_check(svc: Services, posts: Sequence[tuple[str | None, str, str]]) -> list[bool]:
    """Record (sender, text, conversation) posts in order, in one round trip (one script run,
    which costs far less to send than four commands per post); for each, True when the same
    text from that sender reached the flood threshold of conversations."""
    settings = svc.settings
    checked = (
        [i for i, (sender, text, _) in enumerate(posts) if sender and text.strip()]
        if settings.flood_conversations > 0
        else []
    )
    flooded = [False] * len(posts)
    if not checked:
        return flooded
    fingerprint = _fingerprinter(svc)
    now = time.time()
    window = settings.flood_window_s
    keys = [f"{PREFIX}{posts[i][0]}:{fingerprint(posts[i][1])}" for i in checked]
    counts = svc.redis.register_script(_RECORD)(
        keys=keys, args=[now, now - window, window, *(posts[i][2] for i in checked)]
    )
    for i, n in zip(checked, counts, strict=True):
        flooded[i] = int(n) >= settings.flood_conversations
    return flooded
