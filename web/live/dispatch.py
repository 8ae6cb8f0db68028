"""Wake-ups to frames: the process's one Redis subscriber and the dispatcher it feeds.

The pipeline appends events to per-user streams and publishes, on `parley:wake`, each user's
new entry id with the id before it (core/events.py). The subscriber listens there and on
`parley:live` (ephemeral typing/presence, handed straight to the named users' sockets). For
each woken user with local sockets the dispatcher takes the new entries from the wake-up itself
when every live socket of the user is at or past the id before them (the common case: nothing
to read), and otherwise reads the stream ONCE, after the lowest cursor among that user's
sockets; it renders the entries per viewer (render.py) and queues to each socket only what lies
past its own cursor. The collector is paused while a round runs: its temporaries die by
reference count instead of being promoted, so full collections (which scan every socket's
objects and stall them all) stay rare. For the same reason a wake-up waits for its round as
the text it arrived as: parsed on arrival, its per-user entries were alive when the collector
came back on, and each such pass promoted thousands of them towards the oldest generation,
whose growth is what starts a full collection.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import gevent
import redis
from gevent.event import Event
from sqlalchemy.exc import SQLAlchemyError

from core.events import LIVE_CHANNEL, WAKE_CHANNEL
from web.live import protocol
from web.live.connection import Connection
from web.live.protocol import StreamId
from web.live.render import Outgoing, Viewer
from web.live.replay import LATER_S
from web.live.streams import Entry, parse_wake

if TYPE_CHECKING:
    from web.live.hub import Hub

logger = logging.getLogger(__name__)

DISPATCH_USERS = 2000  # users per dispatch round (one pipelined read, one render batch)
# Wake-ups kept as text for the next round. Past this many (a round stuck on Redis or the
# database) they are parsed on arrival, into state that is bounded per user.
UNPARSED_MAX = 256


class Dispatcher:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.pending: set[str] = set()
        # Pending users whose new entries came with their wake-up: (id before them, entries in
        # order, each right after the one before). Only ever a subset of `pending`.
        self.known: dict[str, tuple[StreamId, list[Entry]]] = {}
        self._wakes: list[str | bytes] = []  # wake-ups not parsed yet, in arrival order
        self._wake = Event()

    # --- the subscriber -----------------------------------------------------------------------

    def subscribe_loop(self) -> None:
        hub = self.hub
        backoff = 0.2
        first = True
        while not hub.stopping:
            ps = hub.redis.pubsub(ignore_subscribe_messages=True)
            try:
                ps.subscribe(WAKE_CHANNEL, LIVE_CHANNEL)
                hub.ready.set()
                if not first:  # wake-ups published while we were away are lost: re-read all
                    self.wake_users(list(hub.by_user))
                first = False
                backoff = 0.2
                while not hub.stopping:
                    msg = ps.get_message(timeout=5.0)
                    if msg is not None:
                        self.on_message(msg)
            except redis.RedisError as exc:
                logger.warning(
                    "hub subscriber lost Redis (%s); reconnecting in %.1fs", exc, backoff
                )
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with suppress(Exception):
                    ps.close()

    def on_message(self, msg: dict[str, Any]) -> None:
        channel = msg["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if channel == WAKE_CHANNEL:  # parsed by the round (see the module docstring)
            self._wakes.append(msg["data"])
            if len(self._wakes) >= UNPARSED_MAX:
                with collector_paused():
                    self._take_wakes()
            self._wake.set()
            return
        with collector_paused():
            self._handle_message(channel, msg["data"])

    def _handle_message(self, channel: str, data: str | bytes) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            logger.warning("undecodable message on %s", channel)
            return
        if channel == WAKE_CHANNEL:
            if isinstance(payload, dict):
                self.wake_with_entries(payload)
            else:  # a bare list of user ids (publishers before core/events.py's wake format)
                self.wake_users(str(u) for u in payload)
        elif channel == LIVE_CHANNEL and isinstance(payload, dict):
            try:
                frame = protocol.ephemeral(str(payload.get("type")), payload.get("data"))
            except ValueError as exc:  # a node of another version: not ours to send
                logger.warning("ephemeral event dropped: %s", exc)
                return
            for user in payload.get("to") or ():
                for c in list(self.hub.by_user.get(user, ())):
                    c.offer_ephemeral(frame)

    # --- wake-ups -----------------------------------------------------------------------------

    def wake_users(self, users: Iterable[str]) -> None:
        """Wake users to read their streams (what is new there is not known)."""
        local = [u for u in users if u in self.hub.by_user]
        if local:
            for u in local:
                self.known.pop(u, None)
            self.pending.update(local)
            self._wake.set()

    def wake_with_entries(self, payload: dict[str, Any]) -> None:
        """A wake-up that names each user's new entry and the id before it: chain the entry
        to what is already known for the user, or fall back to a read."""
        entries = parse_wake(payload, self.hub.by_user)
        self.wake_users(u for u in payload if u and u not in entries)
        limit = self.hub.settings.hub_page
        for u, (prev, entry) in entries.items():
            known = self.known.get(u)
            if known is not None and known[1][-1].sid == prev and len(known[1]) < limit:
                known[1].append(entry)
            elif known is None and u not in self.pending:
                self.known[u] = (prev, [entry])
            else:  # a read is due anyway, or the chain broke: read
                self.known.pop(u, None)
            self.pending.add(u)
        if entries:
            self._wake.set()

    # --- the dispatcher -----------------------------------------------------------------------

    def dispatch_loop(self) -> None:
        hub = self.hub
        while not hub.stopping:
            self._wake.wait()
            self._wake.clear()
            while not hub.stopping:
                with collector_paused():  # from the wake-ups' parsing to the round's end
                    self._take_wakes()
                    if not self.pending:
                        break
                    n = min(DISPATCH_USERS, len(self.pending))
                    users = [self.pending.pop() for _ in range(n)]
                    failed = self._round(users)
                if failed:
                    gevent.sleep(0.5)

    def _take_wakes(self) -> None:
        """Parse the wake-ups that arrived since the last round, in order (parsing never
        yields, so none arrives meanwhile)."""
        wakes, self._wakes = self._wakes, []
        for data in wakes:
            self._handle_message(WAKE_CHANNEL, data)

    def _round(self, users: list[str]) -> bool:
        """Deliver to `users`; True when it failed on Redis or the database (they are pending
        again, for a retry after a pause)."""
        hub = self.hub
        try:
            self.deliver(users)
        except (redis.RedisError, SQLAlchemyError):
            logger.warning("dispatch failed; retrying", exc_info=True)
            self.pending.update(users)
            return True
        except Exception:
            # Not transient: hand each socket to its own replay, so one bad entry
            # cannot silently hold back everyone woken with it.
            logger.exception("dispatch failed for %d user(s)", len(users))
            for u in users:
                for c in list(hub.by_user.get(u, ())):
                    hub.replay.catch_up(c)
        return False

    def deliver(self, users: list[str]) -> None:
        """One round: the new entries of `users`, rendered and queued to their live sockets."""
        hub = self.hub
        page = hub.settings.hub_page
        started, t0, cpu0 = time.time(), time.perf_counter(), time.process_time()
        known = {u: k for u in users if (k := self.known.pop(u, None)) is not None}
        starts: dict[str, StreamId] = {}  # sockets behind this when frames are queued re-read
        to_read: dict[str, StreamId] = {}
        read: dict[str, list[Entry]] = {}
        for u in users:
            cursors = []
            for c in hub.by_user.get(u, ()):
                if c.closing is not None:
                    continue
                if c.catching_up:
                    c.dirty = True
                else:
                    cursors.append(c.cursor)
            if not cursors:
                continue
            low = min(cursors)
            k = known.get(u)
            if k is not None and low >= k[0]:  # nothing lies between: no read
                starts[u], read[u] = k
            else:
                starts[u] = to_read[u] = low
        if not starts:
            return
        if to_read:
            got = hub.streams.read_many(to_read, page)
            for u, entries in got.items():
                if len(entries) == page:  # there may be more: another round after the others
                    self.pending.add(u)
                    self._wake.set()
            read.update(got)
        wants: dict[Viewer, list[Entry]] = {}
        for u, entries in read.items():
            for c in hub.by_user.get(u, ()):
                wants.setdefault((u, c.roles), entries)
        if not read:
            return
        t1 = time.perf_counter()
        frames = hub.render(wants)
        t2 = time.perf_counter()
        later: set[str] = set()
        for u in read:
            for c in list(hub.by_user.get(u, ())):
                if c.closing is not None:
                    continue
                if c.catching_up:
                    c.dirty = True
                    continue
                out = frames.get((u, c.roles))
                if c.cursor < starts[u] or out is None:
                    hub.replay.catch_up(c)  # went live after this round began: let it read
                    continue
                if not _queue(c, out):
                    later.add(u)
        for u in later:  # read again from the cursors, which stayed before the event
            gevent.spawn_later(LATER_S, self.wake_users, [u])
        if logger.isEnabledFor(logging.DEBUG):  # the stages bench/ws.py --profile reports
            t3 = time.perf_counter()
            logger.debug(
                "hub round: %d user(s), started %.3f, read %.1f ms, render %.1f ms, queued %.1f ms"
                ", CPU %.1f ms",
                len(read),
                started,
                (t1 - t0) * 1000,
                (t2 - t1) * 1000,
                (t3 - t2) * 1000,
                (time.process_time() - cpu0) * 1000,
            )


def _queue(conn: Connection, out: list[Outgoing]) -> bool:
    """Queue what lies past the socket's cursor; False when an event must be rendered again
    later (nothing from it on is queued)."""
    for o in out:
        if o.sid <= conn.cursor:
            continue  # already sent (or skipped) to this socket
        if o.later:
            return False
        if o.frame is not None and not conn.offer(o.frame, o.delivered):
            return True  # queue full: the socket is closing with 4008
        conn.cursor = o.sid
    return True


# --- the collector ----------------------------------------------------------------------------


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic collection while a dispatch round runs (see the module docstring)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_gc_started = [0.0]


def log_gc(phase: str, info: dict[str, int]) -> None:
    """DEBUG: how long each collection of the older generations stalled every socket."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    elif info["generation"] == 2:
        took = (time.perf_counter() - _gc_started[0]) * 1000
        logger.debug("gc: full collection, %.1f ms, %d collected", took, info["collected"])
