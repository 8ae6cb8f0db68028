"""This node's presence: one writer greenlet for the claims (web/live/presence.py) of the users
whose sockets it holds, and the `presence` events their comings and goings cause.

Registration, unregistration and the heartbeat only mark users; the writer is the one place
that touches or gives up a claim, so a user's join and leave on this node never race. Who hears
a change comes from the database (domain.live.presence_audience): the members of the user's
small conversations; larger groups ask over REST.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import gevent
import redis
from gevent.event import Event
from sqlalchemy.exc import SQLAlchemyError

from core.events import publish_ephemeral
from domain import live
from web.live.presence import PresenceStore

if TYPE_CHECKING:
    from web.live.hub import Hub

logger = logging.getLogger(__name__)


class PresenceWriter:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.store = PresenceStore(hub.redis, hub.node_id, hub.settings.presence_ttl_s)
        self._dirty: set[str] = set()
        self._wake = Event()

    def mark(self, user_id: str) -> None:
        """The user's sockets here came or went: let the writer settle their claim."""
        self._dirty.add(user_id)
        self._wake.set()

    def mark_all(self, users: Iterable[str]) -> None:
        """Refresh the claims of every user held here (each heartbeat)."""
        self._dirty.update(users)
        self._wake.set()

    def loop(self) -> None:
        """One writer for this node's presence: joins and leaves of a user never race."""
        hub = self.hub
        while not hub.stopping:
            self._wake.wait()
            self._wake.clear()
            users, self._dirty = self._dirty, set()
            here = [u for u in users if u in hub.by_user]
            try:
                came = self.store.touch(here) if here else []
                went = [u for u in users if u not in hub.by_user and self.store.leave(u)]
            except redis.RedisError:
                logger.warning("presence update failed; retrying", exc_info=True)
                self._dirty |= users
                gevent.sleep(1.0)
                self._wake.set()
                continue
            self.announce(came, "online")
            self.announce(went, "offline")

    def leave_all(self, users: list[str]) -> None:
        """Give up this node's claims at shutdown (one round trip) and announce who went."""
        self.announce(self.store.leave_many(users), "offline")

    def announce(self, users: list[str], status: str) -> None:
        """Tell the members of each user's small conversations (large groups ask over REST)."""
        if not users:
            return
        try:
            with self.hub.read_session() as s:
                audience = live.presence_audience(s, users, self.hub.settings.presence_fanout_max)
            for user, to in audience.items():
                publish_ephemeral(
                    self.hub.redis, "presence", {"user_id": user, "status": status}, sorted(to)
                )
        except (redis.RedisError, SQLAlchemyError):
            logger.warning("presence %s announcement failed", status, exc_info=True)
