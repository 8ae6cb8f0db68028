"""The hub: ONE Redis subscriber per web process feeding every WebSocket that process holds.

The pipeline appends events to per-user streams and publishes, on `parley:wake`, each user's
new entry id with the id before it (core/events.py). The hub listens there and on `parley:live`
(ephemeral typing/presence). For each woken user with local sockets it takes the new entries
from the wake-up itself when every live socket of the user is at or past the id before them (the
common case: nothing to read), and otherwise reads the stream ONCE, after the lowest cursor
among that user's sockets; it renders the entries per viewer (web/live/render.py) and queues to
each socket only what lies past its own cursor. No socket polls and none has a Redis connection
of its own. The collector is paused while a round runs: its temporaries die by reference count
instead of being promoted, so full collections (which scan every socket's objects and stall
them all) stay rare.

A socket that resumes (`since`) replays its backlog in its own greenlet, paced by its send
queue; while it does, the hub only marks it `dirty`, and the replay reads again until it has
caught up with nothing new having arrived meanwhile. The socket is registered before that
first read, so nothing appended in between is missed, and cursors only move forward, so
nothing is sent twice.

Greenlets per process: subscriber, dispatcher, heartbeat (pings, presence refresh), presence
writer and delivered-cursor flusher. None of them ever blocks on a socket.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import gevent
import redis
from gevent.event import Event
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from core import metrics
from core.events import LIVE_CHANNEL, WAKE_CHANNEL, publish_ephemeral, stream_bounds
from core.services import Services
from models import Participant
from web.live import protocol
from web.live.connection import Connection
from web.live.presence import PresenceStore
from web.live.protocol import Close, StreamId
from web.live.render import Outgoing, Viewer, render
from web.live.settings import LiveSettings
from web.live.streams import Entry, StreamReader, parse_wake

logger = logging.getLogger(__name__)

DISPATCH_USERS = 2000  # users per dispatch round (one pipelined read, one render batch)
REPLAY_STALL_S = 30.0  # a replay waiting this long for queue room closes the socket (4008)
DELIVERED_FLUSH_S = 0.25
MEMBERS_CACHE_S = 5.0
REDIS_POOL = 32  # shared by all sockets of the process; the subscriber holds one of them
LATER_S = 0.02  # an event whose database commit is in flight is rendered again after this


class Hub:
    """This process's live side: local sockets by user, and the greenlets that feed them."""

    def __init__(self, svc: Services, settings: LiveSettings) -> None:
        self.svc = svc
        self.settings = settings
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        pool = redis.BlockingConnectionPool.from_url(
            svc.settings.redis_url,
            max_connections=REDIS_POOL,
            timeout=20,
            health_check_interval=30,
        )
        self.redis = redis.Redis(connection_pool=pool)
        self.presence = PresenceStore(self.redis, self.node_id, settings.presence_ttl_s)
        self.streams = StreamReader(self.redis)
        self.by_user: dict[str, set[Connection]] = {}
        self.stopping = False
        self._pending: set[str] = set()
        # Pending users whose new entries came with their wake-up: (id before them, entries in
        # order, each right after the one before). Only ever a subset of _pending.
        self._known: dict[str, tuple[StreamId, list[Entry]]] = {}
        self._wake = Event()
        self.ready = Event()
        self._presence_dirty: set[str] = set()
        self._presence_wake = Event()
        self._delivered: dict[tuple[str, str], int] = {}
        self._members: dict[str, tuple[float, list[str]]] = {}
        self._greenlets: list[gevent.Greenlet] = []
        self.read_session = svc.ReadSession  # reads take no SQLite write lock

    def _render(self, wants: dict[Viewer, list[Entry]]) -> dict[Viewer, list[Outgoing]]:
        return render(self.svc, self.read_session, wants)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        # Everything loaded so far (app, models, libraries) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise stall all sockets for 100+ ms
        # under a fan-out's allocations.
        gc.freeze()
        if logger.isEnabledFor(logging.DEBUG):
            gc.callbacks.append(_log_gc)
        for loop in (
            self._subscribe_loop,
            self._dispatch_loop,
            self._heartbeat_loop,
            self._presence_loop,
            self._delivered_loop,
        ):
            self._greenlets.append(gevent.spawn(self._forever, loop))
        self._chain_sigterm()
        # Sockets register only once wake-ups can reach us: one published before the
        # subscription would otherwise be missed by a socket that has just caught up.
        if not self.ready.wait(10):
            logger.warning("hub: not subscribed to Redis yet; sockets will catch up on connect")
        logger.info("hub started on node %s", self.node_id)

    def _forever(self, loop: Any) -> None:
        while not self.stopping:
            try:
                loop()
            except gevent.GreenletExit:
                raise
            except Exception:
                logger.exception("hub loop %s failed; restarting", loop.__name__)
                gevent.sleep(1.0)

    def _chain_sigterm(self) -> None:
        """gunicorn stops a worker with SIGTERM and then waits for open requests to finish;
        WebSockets never finish on their own, so close them with 1001 first."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            gevent.spawn(self.shutdown)
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def shutdown(self) -> None:
        """Close every socket with 1001 so clients resume on another node, and give up this
        node's presence claims."""
        if self.stopping:
            return
        self.stopping = True
        users = list(self.by_user)
        logger.info("hub shutting down: closing sockets of %d user(s)", len(users))
        for conns in list(self.by_user.values()):
            for c in list(conns):
                c.close(Close.GOING_AWAY, "server shutting down: reconnect with since=<last id>")
        with suppress(redis.RedisError):
            self._announce_presence(self.presence.leave_many(users), "offline")
        self._flush_delivered()

    # --- sockets ------------------------------------------------------------------------------

    def register(self, conn: Connection) -> None:
        """Make the socket reachable by wake-ups (before its backlog is read)."""
        conns = self.by_user.setdefault(conn.user_id, set())
        if conn not in conns:
            metrics.ws_connections.inc()
        conns.add(conn)
        if len(conns) == 1:
            self._mark_presence(conn.user_id)

    def unregister(self, conn: Connection) -> None:
        conns = self.by_user.get(conn.user_id)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        metrics.ws_connections.dec()
        if not conns:
            del self.by_user[conn.user_id]
            self._mark_presence(conn.user_id)

    def position_now(self, user_id: str) -> StreamId:
        """The end of the user's stream: a socket starting here gets exactly the events
        appended after this call."""
        return protocol.parse_id(stream_bounds(self.redis, user_id).last_id) or (0, 0)

    def clock_position(self) -> StreamId:
        """A start for a socket whose user is not known yet (web/ws.py authenticates it with
        its first frame): every event appended to any stream after this returns has a larger
        id, and every one appended before it was called a smaller one (unless the clock of
        Redis stepped back, which can only add an event, never drop one).

        Redis stamps stream ids with its clock in milliseconds, so the answer is "the end of the
        current millisecond": read the clock, then wait (at most 1 ms) until Redis's clock is
        past it, so nothing appended after the return can share it.
        """
        sec, usec = self.redis.time()
        now_ms = sec * 1000 + usec // 1000
        while True:
            gevent.sleep((1000 - usec % 1000) / 1e6)
            sec, usec = self.redis.time()
            if sec * 1000 + usec // 1000 > now_ms:
                return (now_ms, protocol.MAX_SEQ)

    def start_stream(
        self, conn: Connection, since: str | None, start: StreamId | None = None
    ) -> None:
        """Position the socket after `since`, or else at `start` (fixed by web/ws.py before
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
        bounds = stream_bounds(self.redis, conn.user_id)
        conn.drop_durable()  # whatever was queued is re-read from the new position
        last = protocol.parse_id(bounds.last_id) or (0, 0)
        if since is None:
            conn.cursor = last
        else:
            sid = protocol.parse_id(since)
            problem = _resume_problem(sid, last, bounds.first_id, bounds.ever_trimmed)
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
        conn.catching_up = True
        conn.dirty = True
        if not conn.replaying:
            conn.replaying = True
            gevent.spawn(self._replay, conn)

    def _replay(self, conn: Connection) -> None:
        """Send the socket everything after its cursor, paced by its queue, then hand it to
        the hub's live path — only after a read that found nothing new and no wake-up came."""
        page = self.settings.hub_page
        viewer: Viewer = (conn.user_id, conn.roles)
        try:
            while conn.closing is None and not self.stopping:
                gen = conn.generation
                conn.dirty = False
                try:
                    entries = self.streams.read(conn.user_id, conn.cursor, page)
                    out = self._render({viewer: entries})[viewer] if entries else []
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

    # --- wake-ups -----------------------------------------------------------------------------

    def _subscribe_loop(self) -> None:
        backoff = 0.2
        first = True
        while not self.stopping:
            ps = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                ps.subscribe(WAKE_CHANNEL, LIVE_CHANNEL)
                self.ready.set()
                if not first:  # wake-ups published while we were away are lost: re-read all
                    self._wake_users(list(self.by_user))
                first = False
                backoff = 0.2
                while not self.stopping:
                    msg = ps.get_message(timeout=5.0)
                    if msg is not None:
                        self._on_message(msg)
            except redis.RedisError as exc:
                logger.warning(
                    "hub subscriber lost Redis (%s); reconnecting in %.1fs", exc, backoff
                )
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with suppress(Exception):
                    ps.close()

    def _on_message(self, msg: dict[str, Any]) -> None:
        with _collector_paused():  # a wake-up's entries live until their round: not promoted
            self._handle_message(msg)

    def _handle_message(self, msg: dict[str, Any]) -> None:
        channel = msg["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        try:
            payload = json.loads(msg["data"])
        except ValueError:
            logger.warning("undecodable message on %s", channel)
            return
        if channel == WAKE_CHANNEL:
            if isinstance(payload, dict):
                self._wake_with_entries(payload)
            else:  # a bare list of user ids (publishers before core/events.py's wake format)
                self._wake_users(str(u) for u in payload)
        elif channel == LIVE_CHANNEL and isinstance(payload, dict):
            try:
                frame = protocol.ephemeral(str(payload.get("type")), payload.get("data"))
            except ValueError as exc:  # a node of another version: not ours to send
                logger.warning("ephemeral event dropped: %s", exc)
                return
            for user in payload.get("to") or ():
                for c in list(self.by_user.get(user, ())):
                    c.offer_ephemeral(frame)

    def _wake_users(self, users: Iterable[str]) -> None:
        """Wake users to read their streams (what is new there is not known)."""
        local = [u for u in users if u in self.by_user]
        if local:
            for u in local:
                self._known.pop(u, None)
            self._pending.update(local)
            self._wake.set()

    def _wake_with_entries(self, payload: dict[str, Any]) -> None:
        """A wake-up that names each user's new entry and the id before it: chain the entry
        to what is already known for the user, or fall back to a read."""
        entries = parse_wake(payload, self.by_user)
        self._wake_users(u for u in payload if u and u not in entries)
        limit = self.settings.hub_page
        for u, (prev, entry) in entries.items():
            known = self._known.get(u)
            if known is not None and known[1][-1].sid == prev and len(known[1]) < limit:
                known[1].append(entry)
            elif known is None and u not in self._pending:
                self._known[u] = (prev, [entry])
            else:  # a read is due anyway, or the chain broke: read
                self._known.pop(u, None)
            self._pending.add(u)
        if entries:
            self._wake.set()

    def _dispatch_loop(self) -> None:
        while not self.stopping:
            self._wake.wait()
            self._wake.clear()
            while self._pending and not self.stopping:
                users = [
                    self._pending.pop() for _ in range(min(DISPATCH_USERS, len(self._pending)))
                ]
                try:
                    with _collector_paused():
                        self._deliver(users)
                except (redis.RedisError, SQLAlchemyError):
                    logger.warning("dispatch failed; retrying", exc_info=True)
                    self._pending.update(users)
                    gevent.sleep(0.5)
                except Exception:
                    # Not transient: hand each socket to its own replay, so one bad entry
                    # cannot silently hold back everyone woken with it.
                    logger.exception("dispatch failed for %d user(s)", len(users))
                    for u in users:
                        for c in list(self.by_user.get(u, ())):
                            self.catch_up(c)

    def _deliver(self, users: list[str]) -> None:
        page = self.settings.hub_page
        started, t0, cpu0 = time.time(), time.perf_counter(), time.process_time()
        known = {u: k for u in users if (k := self._known.pop(u, None)) is not None}
        starts: dict[str, StreamId] = {}  # sockets behind this when frames are queued re-read
        to_read: dict[str, StreamId] = {}
        read: dict[str, list[Entry]] = {}
        for u in users:
            cursors = []
            for c in self.by_user.get(u, ()):
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
            got = self.streams.read_many(to_read, page)
            for u, entries in got.items():
                if len(entries) == page:  # there may be more: another round after the others
                    self._pending.add(u)
                    self._wake.set()
            read.update(got)
        wants: dict[Viewer, list[Entry]] = {}
        for u, entries in read.items():
            for c in self.by_user.get(u, ()):
                wants.setdefault((u, c.roles), entries)
        if not read:
            return
        t1 = time.perf_counter()
        frames = self._render(wants)
        t2 = time.perf_counter()
        later: set[str] = set()
        for u in read:
            for c in list(self.by_user.get(u, ())):
                if c.closing is not None:
                    continue
                if c.catching_up:
                    c.dirty = True
                    continue
                out = frames.get((u, c.roles))
                if c.cursor < starts[u] or out is None:
                    self.catch_up(c)  # went live after this round began: let it read itself
                    continue
                if not _queue(c, out):
                    later.add(u)
        for u in later:  # read again from the cursors, which stayed before the event
            gevent.spawn_later(LATER_S, self._wake_users, [u])
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

    # --- heartbeat, presence, delivered cursors -----------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self.stopping:
            gevent.sleep(self.settings.ping_s)
            now = time.monotonic()
            for conns in list(self.by_user.values()):
                for c in list(conns):
                    if c.closing is not None:
                        continue
                    if c.ping_at is not None and not c.ws.pong_received and c.last_rx < c.ping_at:
                        c.close(Close.HEARTBEAT, "no pong: connection presumed dead", 1.0)
                        continue
                    c.ws.pong_received = False
                    c.ping_at = now
                    c.ping()
            self._presence_dirty.update(self.by_user)
            self._presence_wake.set()

    def _mark_presence(self, user_id: str) -> None:
        self._presence_dirty.add(user_id)
        self._presence_wake.set()

    def _presence_loop(self) -> None:
        """One writer for this node's presence: joins and leaves of a user never race."""
        while not self.stopping:
            self._presence_wake.wait()
            self._presence_wake.clear()
            users, self._presence_dirty = self._presence_dirty, set()
            here = [u for u in users if u in self.by_user]
            try:
                came = self.presence.touch(here) if here else []
                went = [u for u in users if u not in self.by_user and self.presence.leave(u)]
            except redis.RedisError:
                logger.warning("presence update failed; retrying", exc_info=True)
                self._presence_dirty |= users
                gevent.sleep(1.0)
                self._presence_wake.set()
                continue
            self._announce_presence(came, "online")
            self._announce_presence(went, "offline")

    def _announce_presence(self, users: list[str], status: str) -> None:
        """Tell the members of each user's small conversations (large groups ask over REST)."""
        if not users:
            return
        try:
            audience = self._presence_audience(users)
            for user, to in audience.items():
                publish_ephemeral(
                    self.redis, "presence", {"user_id": user, "status": status}, sorted(to)
                )
        except (redis.RedisError, SQLAlchemyError):
            logger.warning("presence %s announcement failed", status, exc_info=True)

    def _presence_audience(self, users: list[str]) -> dict[str, set[str]]:
        limit = self.settings.presence_fanout_max
        P = Participant
        with self.read_session() as s:
            mine = s.execute(
                select(P.conversation_id, P.user_id).where(
                    P.user_id.in_(users), P.left_at.is_(None)
                )
            ).all()
            if not mine:
                return {}
            cids = {cid for cid, _ in mine}
            small = {
                cid
                for cid, n in s.execute(
                    select(P.conversation_id, func.count())
                    .where(P.conversation_id.in_(cids), P.left_at.is_(None))
                    .group_by(P.conversation_id)
                )
                if n <= limit
            }
            if not small:
                return {}
            members: dict[str, list[str]] = defaultdict(list)
            for cid, user in s.execute(
                select(P.conversation_id, P.user_id).where(
                    P.conversation_id.in_(small), P.left_at.is_(None)
                )
            ):
                members[cid].append(user)
        out: dict[str, set[str]] = defaultdict(set)
        for cid, user in mine:
            out[user].update(m for m in members.get(cid, ()) if m != user)
        return {u: to for u, to in out.items() if to}

    def note_delivered(self, conn: Connection, conversation_id: str, seq: int) -> None:
        key = (conversation_id, conn.user_id)
        if self._delivered.get(key, 0) < seq:
            self._delivered[key] = seq

    def _delivered_loop(self) -> None:
        while not self.stopping:
            gevent.sleep(DELIVERED_FLUSH_S)
            self._flush_delivered()

    def _flush_delivered(self) -> None:
        """Move participants' delivered cursors forward (never back): one UPDATE per
        conversation and seq, so a message fanned out to 1,000 sockets costs one statement."""
        if not self._delivered:
            return
        batch, self._delivered = self._delivered, {}
        try:
            self._save_delivered(batch)
        except SQLAlchemyError:
            logger.warning("delivered cursors not saved; retrying", exc_info=True)
            for key, seq in batch.items():
                if self._delivered.get(key, 0) < seq:
                    self._delivered[key] = seq

    def _save_delivered(self, batch: dict[tuple[str, str], int]) -> None:
        groups: dict[tuple[str, int], list[str]] = defaultdict(list)
        for (cid, user), seq in batch.items():
            groups[(cid, seq)].append(user)
        with self.svc.Session.begin() as s:
            for (cid, seq), users in groups.items():
                s.execute(
                    update(Participant)
                    .where(
                        Participant.conversation_id == cid,
                        Participant.user_id.in_(users),
                        Participant.delivered_seq < seq,
                    )
                    .values(delivered_seq=seq)
                )

    # --- typing -------------------------------------------------------------------------------

    def members(self, conversation_id: str) -> list[str]:
        """Active members of a conversation, cached briefly (typing comes in bursts)."""
        now = time.monotonic()
        hit = self._members.get(conversation_id)
        if hit is not None and now - hit[0] < MEMBERS_CACHE_S:
            return hit[1]
        with self.read_session() as s:
            users = list(
                s.scalars(
                    select(Participant.user_id).where(
                        Participant.conversation_id == conversation_id,
                        Participant.left_at.is_(None),
                    )
                )
            )
        if len(self._members) > 10_000:
            self._members.clear()
        self._members[conversation_id] = (now, users)
        return users

    def typing(self, conn: Connection, conversation_id: str, members: list[str]) -> None:
        data = {
            "conversation_id": conversation_id,
            "user_id": conn.user_id,
            "expires_in": self.settings.typing_expires_s,
        }
        publish_ephemeral(self.redis, "typing", data, [m for m in members if m != conn.user_id])


@contextmanager
def _collector_paused() -> Iterator[None]:
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


def _log_gc(phase: str, info: dict[str, int]) -> None:
    """DEBUG: how long each collection of the older generations stalled every socket."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    elif info["generation"] == 2:
        took = (time.perf_counter() - _gc_started[0]) * 1000
        logger.debug("gc: full collection, %.1f ms, %d collected", took, info["collected"])


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


def _resume_problem(
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


_HUB: dict[int, Hub] = {}


def hub_for(svc: Services, settings: LiveSettings) -> Hub:
    """This process's hub, started on first use (after gunicorn forked the worker)."""
    pid = os.getpid()
    hub = _HUB.get(pid)
    if hub is None:
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            raise RuntimeError(
                "live events need gevent: run the web process with gunicorn --worker-class gevent"
            )
        hub = _HUB[pid] = Hub(svc, settings)
        hub.start()
    else:
        hub.ready.wait(10)  # a socket arriving while the first one starts the hub
    return hub
