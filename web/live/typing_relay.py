"""`typing` events: from one socket's frame to the other members' sockets on every node.

The session checks that the typist is a member (from a briefly cached member list: typing comes
in bursts) and throttles per conversation; the event goes out on `parley:live` with its
recipients, so each node's hub hands it to the sockets it holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from sqlalchemy.orm import Session

from core.events import publish_ephemeral
from domain import live
from web.live.connection import Connection

MEMBERS_CACHE_S = 5.0
MEMBERS_CACHED = 10_000  # conversations; past this the cache starts over


class TypingRelay:
    def __init__(
        self, client: redis.Redis, read_session: Callable[[], Session], expires_s: float
    ) -> None:
        self.redis = client
        self.read_session = read_session
        self.expires_s = expires_s
        self._members: dict[str, tuple[float, list[str]]] = {}

    def members(self, conversation_id: str) -> list[str]:
        """Active members of a conversation, cached briefly (typing comes in bursts)."""
        now = time.monotonic()
        hit = self._members.get(conversation_id)
        if hit is not None and now - hit[0] < MEMBERS_CACHE_S:
            return hit[1]
        with self.read_session() as s:
            users = live.member_ids(s, conversation_id)
        if len(self._members) > MEMBERS_CACHED:
            self._members.clear()
        self._members[conversation_id] = (now, users)
        return users

    def publish(self, conn: Connection, conversation_id: str, members: list[str]) -> None:
        """Tell the conversation's other members that `conn`'s user is typing."""
        data = {
            "conversation_id": conversation_id,
            "user_id": conn.user_id,
            "expires_in": self.expires_s,
        }
        publish_ephemeral(self.redis, "typing", data, [m for m in members if m != conn.user_id])
