"""Who is online, shared by every web node through Redis.

`parley:presence:<user>` exists while at least one node holds a socket of that user: it is what
`core.events.is_online` (and so the push stage) checks. Each node refreshes it, with a TTL of
about three heartbeats, for the users it holds, and records itself in `parley:presence-nodes:
<user>` (node → deadline). When a node's last socket of a user closes, the key is deleted only
if no other node's deadline is still in the future; a crashed node's claim simply runs out.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from core.events import PRESENCE_PREFIX

NODES_PREFIX = "parley:presence-nodes:"

# KEYS: presence key, nodes key, presence key, nodes key, ...; ARGV: node id, ttl seconds.
# Returns the (1-based) positions of users whose presence key was absent: they just came online.
_TOUCH = """
local node, ttl = ARGV[1], tonumber(ARGV[2])
local now = tonumber(redis.call('TIME')[1])
local fresh = {}
for i = 1, #KEYS, 2 do
  if redis.call('SET', KEYS[i], node, 'EX', ttl, 'NX') then
    fresh[#fresh + 1] = (i + 1) / 2
  else
    redis.call('EXPIRE', KEYS[i], ttl)
  end
  redis.call('HSET', KEYS[i + 1], node, now + ttl)
  redis.call('EXPIRE', KEYS[i + 1], ttl)
end
return fresh
"""

# KEYS: presence key, nodes key; ARGV: node id. Returns 1 when the user went offline (a user
# whose claim was never written, or already ran out, does not "go" offline again).
_LEAVE = """
redis.call('HDEL', KEYS[2], ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local rest = redis.call('HGETALL', KEYS[2])
for i = 2, #rest, 2 do
  if tonumber(rest[i]) > now then return 0 end
end
if redis.call('DEL', KEYS[1], KEYS[2]) > 0 then return 1 end
return 0
"""

TOUCH_BATCH = 500


class PresenceStore:
    def __init__(self, client: redis.Redis, node_id: str, ttl_s: int) -> None:
        self.redis = client
        self.node_id = node_id
        self.ttl_s = ttl_s
        self._touch = client.register_script(_TOUCH)
        self._leave = client.register_script(_LEAVE)

    def touch(self, user_ids: Sequence[str]) -> list[str]:
        """Mark users online from this node (join or refresh); returns those who were offline."""
        came_online: list[str] = []
        for start in range(0, len(user_ids), TOUCH_BATCH):
            chunk = list(user_ids[start : start + TOUCH_BATCH])
            keys = [k for u in chunk for k in (PRESENCE_PREFIX + u, NODES_PREFIX + u)]
            fresh = self._touch(keys=keys, args=[self.node_id, self.ttl_s])
            came_online += [chunk[int(i) - 1] for i in fresh or []]
        return came_online

    def leave(self, user_id: str) -> bool:
        """This node holds no socket of the user any more; True when no node does."""
        keys = [PRESENCE_PREFIX + user_id, NODES_PREFIX + user_id]
        return bool(self._leave(keys=keys, args=[self.node_id]))

    def leave_many(self, user_ids: Sequence[str]) -> list[str]:
        """`leave` for many users in one round trip (node shutdown); those who went offline."""
        pipe = self.redis.pipeline(transaction=False)
        for u in user_ids:
            self._leave(
                keys=[PRESENCE_PREFIX + u, NODES_PREFIX + u], args=[self.node_id], client=pipe
            )
        return [u for u, gone in zip(user_ids, pipe.execute(), strict=True) if gone]

    def online(self, user_ids: Sequence[str]) -> set[str]:
        if not user_ids:
            return set()
        found = self.redis.mget([PRESENCE_PREFIX + u for u in user_ids])
        return {u for u, v in zip(user_ids, found, strict=True) if v is not None}
