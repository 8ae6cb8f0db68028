"""The hub: ONE Redis subscriber per web process feeding every WebSocket that process holds.

The hub owns the process's local sockets by user, one bounded Redis connection pool (no socket
has a connection of its own, none polls) and the greenlets that serve them, each in its own
module:

- `dispatch.py`: the subscriber to `parley:wake` and `parley:live`, and the dispatcher that
  turns wake-ups into frames for each local socket (at most one stream read per user per round);
- `replay.py`: where a socket starts in its user's stream, and its replay up to the live path;
- `presence_writer.py`: this node's presence claims and the `presence` events they cause;
- `cursors.py`: delivered cursors, saved in batches;
- `typing_relay.py`: `typing` events to a conversation's other members;
- here: the lifecycle (start, SIGTERM, shutdown), registration and the heartbeat.

Greenlets per process: subscriber, dispatcher, heartbeat (pings, presence refresh), presence
writer and delivered-cursor flusher. None of them ever blocks on a socket.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import gevent
import redis
from gevent.event import Event

from core import metrics
from core.services import Services
from web.live.connection import Connection
from web.live.cursors import DELIVERED_FLUSH_S, DeliveredCursors
from web.live.dispatch import Dispatcher, log_gc
from web.live.presence_writer import PresenceWriter
from web.live.protocol import Close
from web.live.render import Outgoing, Viewer, render
from web.live.replay import Replay
from web.live.settings import LiveSettings
from web.live.streams import Entry, StreamReader
from web.live.typing_relay import TypingRelay

logger = logging.getLogger(__name__)

REDIS_POOL = 32  # shared by all sockets of the process; the subscriber holds one of them


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
        self.streams = StreamReader(self.redis)
        self.by_user: dict[str, set[Connection]] = {}
        self.stopping = False
        self.ready = Event()
        self.read_session = svc.ReadSession  # reads take no SQLite write lock
        self.replay = Replay(self)
        self.dispatcher = Dispatcher(self)
        self.presence = PresenceWriter(self)
        self.delivered = DeliveredCursors(svc)
        self.typing = TypingRelay(self.redis, self.read_session, settings.typing_expires_s)
        self._greenlets: list[gevent.Greenlet] = []

    def render(self, wants: dict[Viewer, list[Entry]]) -> dict[Viewer, list[Outgoing]]:
        return render(self.svc, self.read_session, wants)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        # Everything loaded so far (app, models, libraries) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise stall all sockets for 100+ ms
        # under a fan-out's allocations.
        gc.freeze()
        if logger.isEnabledFor(logging.DEBUG):
            gc.callbacks.append(log_gc)
        loops: list[Callable[[], None]] = [
            self.dispatcher.subscribe_loop,
            self.dispatcher.dispatch_loop,
            self._heartbeat_loop,
            self.presence.loop,
            self._delivered_loop,
        ]
        for loop in loops:
            self._greenlets.append(gevent.spawn(self._forever, loop))
        self._chain_sigterm()
        # Sockets register only once wake-ups can reach us: one published before the
        # subscription would otherwise be missed by a socket that has just caught up.
        if not self.ready.wait(10):
            logger.warning("hub: not subscribed to Redis yet; sockets will catch up on connect")
        logger.info("hub started on node %s", self.node_id)

    def _forever(self, loop: Callable[[], None]) -> None:
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
            self.presence.leave_all(users)
        self.delivered.flush()

    # --- sockets ------------------------------------------------------------------------------

    def register(self, conn: Connection) -> None:
        """Make the socket reachable by wake-ups (before its backlog is read)."""
        conns = self.by_user.setdefault(conn.user_id, set())
        if conn not in conns:
            metrics.ws_connections.inc()
        conns.add(conn)
        if len(conns) == 1:
            self.presence.mark(conn.user_id)

    def unregister(self, conn: Connection) -> None:
        conns = self.by_user.get(conn.user_id)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        metrics.ws_connections.dec()
        if not conns:
            del self.by_user[conn.user_id]
            self.presence.mark(conn.user_id)

    # --- heartbeat, delivered cursors ---------------------------------------------------------

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
            self.presence.mark_all(self.by_user)

    def _delivered_loop(self) -> None:
        while not self.stopping:
            gevent.sleep(DELIVERED_FLUSH_S)
            self.delivered.flush()


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
