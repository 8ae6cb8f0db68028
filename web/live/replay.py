"""Where a socket starts in its user's stream, and its replay up to the hub's live path.

A socket that resumes (`since`) replays its backlog in its own greenlet, paced by its send
queue; while it does, the hub only marks it `dirty`, and the replay reads again until it has
caught up with nothing new having arrived meanwhile. The socket is registered before that
first read, so nothing appended in between is missed, and cursors only move forward, so
nothing is sent twice. An id the stream can no longer serve without a gap gets `resync`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent
import redis
from sqlalchemy.exc import SQLAlchemyError

from core.events import stream_bounds
from web.live import protocol
from web.live.connection import Connection
from web.live.protocol import Close, StreamId
from web.live.render import Viewer

if TYPE_CHECKING:
    from web.live.hub import Hub

logger = logging.getLogger(__name__)

REPLAY_STALL_S = 30.0  # a replay waiting this long for queue room closes the socket (4008)
LATER_S = 0.02  # an event whose database commit is in flight is rendered again after this


class Replay:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def position_now(self, user_id: str) -> StreamId:
        """The end of the user's stream: a socket starting here gets exactly the events
        appended after this call."""
        return protocol.parse_id(stream_bounds(self.hub.redis, user_id).last_id) or (0, 0)

    def clock_position(self) -> StreamId:
        """A start for a socket whose user is not known yet (the session authenticates it
        with its first frame): every event appended to any stream after this returns has a
        larger id, and every one appended before it was called a smaller one (unless the clock
        of Redis stepped back, which can only add an event, never drop one).

        Redis stamps stream ids with its clock in milliseconds, so the answer is "the end of the
        current millisecond": read the clock, then wait (at most 1 ms) until Redis's clock is
        past it, so nothing appended after the return can share it.
        """
        sec, usec = self.hub.redis.time()
        now_ms = sec * 1000 + usec // 1000
        while True:
            gevent.sleep((1000 - usec % 1000) / 1e6)
            sec, usec = self.hub.redis.time()
            if sec * 1000 + usec // 1000 > now_ms:
                return (now_ms, protocol.MAX_SEQ)

    def start_stream(
        self, conn: Connection, since: str | None, start: StreamId | None = None
    ) -> None:
        """Position the socket after `since`, or else at `start` (fixed by the endpoint before
        the handshake), or else at the stream's end, and replay from there.

        An id the stream can no longer serve without a gap gets a `resync` frame instead, and
        the socket goes live from now: the client refetches over REST.
        """
        conn.generation += 1  # a replay still running for an earlier position stops
        conn.catching_up = True  # from here on the hub leaves this socket alone
        if since is None and start is not None:
            conn.drop_durable()
            conn.cursor = start  # read by the server itself: there is nothing to check
            self.catch_up(conn)
            return
        bounds = stream_bounds(self.hub.redis, conn.user_id)
        conn.drop_durable()  # whatever was queued is re-read from the new position
        last = protocol.parse_id(bounds.last_id) or (0, 0)
        if since is None:
            conn.cursor = last
        else:
            sid = protocol.parse_id(since)
            problem = resume_problem(sid, last, bounds.first_id, bounds.ever_trimmed)
            if problem is None and sid is not None:
                conn.cursor = sid
            else:
                conn.cursor = last
                conn.offer_ephemeral(
                    protocol.ephemeral(
                        "resync",
                        {"reason": problem, "oldest": bounds.first_id, "latest": bounds.last_id},
                    )
                )
                logger.info("resume from %r refused: %s", since, problem)
        self.catch_up(conn)

    def catch_up(self, conn: Connection) -> None:
        """Take the socket off the live path until a replay has read up to the stream's end."""
        conn.catching_up = True
        conn.dirty = True
        if not conn.replaying:
            conn.replaying = True
            gevent.spawn(self._replay, conn)

    def _replay(self, conn: Connection) -> None:
        """Send the socket everything after its cursor, paced by its queue, then hand it to
        the hub's live path — only after a read that found nothing new and no wake-up came."""
        hub = self.hub
        page = hub.settings.hub_page
        viewer: Viewer = (conn.user_id, conn.roles)
        try:
            while conn.closing is None and not hub.stopping:
                gen = conn.generation
                conn.dirty = False
                try:
                    entries = hub.streams.read(conn.user_id, conn.cursor, page)
                    out = hub.render({viewer: entries})[viewer] if entries else []
                except (redis.RedisError, SQLAlchemyError):
                    logger.warning("replay read failed; retrying", exc_info=True)
                    gevent.sleep(1.0)
                    continue
                except Exception:
                    logger.exception("replay failed", extra={"user_id": conn.user_id})
                    conn.close(Close.INTERNAL, "internal error: reconnect with since=<last id>")
                    return
                later = False
                for o in out:
                    if conn.generation != gen or conn.closing is not None:
                        break
                    if o.sid <= conn.cursor:
                        continue
                    if o.later:
                        later = True
                        break
                    if o.frame is not None:
                        if not conn.wait_for_room(1, REPLAY_STALL_S):
                            conn.close(Close.TOO_SLOW, "too slow: resume with since=<last id>")
                            return
                        if conn.generation != gen:
                            break
                        conn.offer(o.frame, o.delivered)
                    conn.cursor = o.sid
                if later:
                    gevent.sleep(LATER_S)
                elif conn.generation == gen and len(entries) < page and not conn.dirty:
                    conn.catching_up = False
                    return
        finally:
            conn.replaying = False


def resume_problem(
    since: StreamId | None, last: StreamId, first_id: str | None, ever_trimmed: bool
) -> str | None:
    """Why resuming after `since` cannot be gap-free, or None when it can."""
    if since is None:
        return "malformed id: expected <milliseconds>-<sequence> as sent in 'id'"
    if since > last:
        return "unknown id: newer than anything in this stream"
    first = protocol.parse_id(first_id) if first_id else None
    if ever_trimmed and since < last and (first is None or since < first):
        return "trimmed: events after this id are no longer kept; refetch over REST"
    return None
