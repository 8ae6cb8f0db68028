"""One authenticated WebSocket: its bounded send queue, its stream cursor, its way out.

Everything written to the socket goes through `offer()`, which never blocks: the hub calls it
for thousands of sockets in a row, and one slow peer must not hold up the others. When nothing
is queued, the frame is written at once with a non-blocking write (the common case: a
fan-out to 1,000 sockets then spawns no greenlet at all); whatever the kernel does not take
goes to a bounded deque drained by a writer greenlet that exists only while there is a backlog.
A full queue closes the socket with 4008; the client resumes from the last id it received and
loses nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from simple_websocket import ConnectionClosed, Server
from wsproto.connection import ConnectionState
from wsproto.events import Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from domain.principals import Principal
from web.live import protocol
from web.live.protocol import Close, StreamId

logger = logging.getLogger(__name__)

# Queue items: (kind, payload, delivered marker). _REST is the unsent tail of a frame that a
# direct write began; it goes first, and the writer that sends it inherits the socket lock.
_DURABLE, _EPHEMERAL, _PING, _CLOSE, _REST = range(5)
_WRITE_ERRORS = (ConnectionClosed, OSError, LocalProtocolError)


class SerializedSocket:
    """simple-websocket writes with `socket.send()` from two greenlets (its reader answers
    pings and closes, our writer sends events). A partial `send()` would drop the rest of a
    frame and two writers could interleave frames, so every write becomes one locked
    `sendall()`, and our direct writes take the same lock."""

    def __init__(self, sock: socket.socket) -> None:
        self.raw = sock
        self.lock = Semaphore()

    def send(self, data: bytes) -> int:
        with self.lock:
            self.raw.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


_last_framed: tuple[str | None, bytes] = (None, b"")  # (frame, its bytes): see text_frame


def text_frame(frame: str) -> bytes:
    """A server's unfragmented, unmasked text frame (RFC 6455 5.2): what wsproto sends for
    `TextMessage(frame)` on a connection without extensions, for a tenth of its cost. A
    dispatch round hands the same frame object to the sockets of everyone who sees an event
    alike (web/live/render.py), so the last one encoded is kept and reused."""
    global _last_framed
    last = _last_framed
    if last[0] is frame:
        return last[1]
    data = _framed(frame)
    _last_framed = (frame, data)
    return data


def _framed(frame: str) -> bytes:
    data = frame.encode()
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


def _without_extensions(ws: Server) -> bool:
    """True when the handshake negotiated no extension (permessage-deflate transforms every
    frame, per connection): only then does `text_frame` match what wsproto would send."""
    proto = getattr(getattr(ws.ws, "connection", None), "_proto", None)
    extensions = getattr(proto, "extensions", None)
    return isinstance(extensions, list) and not extensions


def direct_fd(sock: socket.socket) -> int | None:
    """The descriptor for non-blocking direct writes, or None where they are not possible
    (TLS terminated in-process, or a blocking descriptor outside gevent)."""
    if hasattr(sock, "getpeercert"):
        return None
    fd = sock.fileno()
    return fd if fd >= 0 and not os.get_blocking(fd) else None


class Connection:
    """A registered socket: who it serves, where it is in their stream, what it still owes."""

    __slots__ = (
        "__weakref__",
        "_fd",
        "_plain",
        "_principal",
        "_queue",
        "_room",
        "_writer",
        "catching_up",
        "close_grace",
        "closing",
        "cursor",
        "dirty",
        "expires_at",
        "generation",
        "last_rx",
        "max_queue",
        "on_delivered",
        "ping_at",
        "replaying",
        "roles",
        "typing_at",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        ws: Server,
        principal: Principal,
        expires_at: float,
        max_queue: int,
        close_grace: float,
        on_delivered: Callable[[Connection, str, int], None],
    ) -> None:
        assert principal.user_id is not None
        self.ws = ws
        self.principal = principal  # sets `roles` too
        self.user_id: str = principal.user_id
        self.expires_at = expires_at  # time.time() at which the token expires
        self.max_queue = max_queue
        self.close_grace = close_grace
        self.on_delivered = on_delivered
        self._queue: deque[tuple[int, Any, Any]] = deque()
        self._fd = direct_fd(ws.sock.raw) if isinstance(ws.sock, SerializedSocket) else None
        # wsproto's connection, when frames may be written as `text_frame` makes them (its
        # state is read per frame: one property, not WSConnection's two)
        self._plain = ws.ws.connection if _without_extensions(ws) else None
        self._writer: gevent.Greenlet | None = None
        self._room: Event | None = None
        # Stream position: the id of the last durable event queued (or skipped) for this socket.
        # Only ever moves forward, except when the client explicitly resumes from an older id.
        self.cursor: StreamId = (0, 0)
        self.generation = 0  # bumped by every resume: a replay of an older one stops
        self.catching_up = True  # the hub leaves sockets that replay their backlog alone
        self.dirty = False  # a wake-up arrived while catching up: read once more
        self.replaying = False  # a replay greenlet is running for this socket
        self.closing: int | None = None
        self.last_rx = time.monotonic()
        self.ping_at: float | None = None
        self.typing_at: dict[str, float] | None = None  # created by the first typing frame

    @property
    def principal(self) -> Principal:
        return self._principal

    @principal.setter
    def principal(self, principal: Principal) -> None:
        """A re-authenticated socket's roles follow its new token. `roles` is a plain
        attribute: each dispatch round reads it twice for every socket it serves."""
        self._principal = principal
        self.roles: frozenset[str] = principal.roles

    # --- sending ------------------------------------------------------------------------------

    def offer(self, frame: str, delivered: tuple[str, int] | None = None) -> bool:
        """Queue a durable frame without blocking; False (and the socket closing) when full."""
        return self._put(_DURABLE, frame, delivered)

    def offer_ephemeral(self, frame: str) -> bool:
        return self._put(_EPHEMERAL, frame, None)

    def ping(self) -> None:
        if self.closing is None:
            self._queue.append((_PING, None, None))
            self._kick()

    def _put(self, kind: int, frame: str, meta: Any) -> bool:
        if self.closing is not None:
            return False
        if self._writer is None and self._fd is not None and self._write_now(frame, meta):
            return True
        if len(self._queue) >= self.max_queue:
            logger.info(
                "send queue full (%d): closing a slow socket",
                self.max_queue,
                extra={"user_id": self.user_id},
            )
            self.close(Close.TOO_SLOW, "too slow: resume with since=<last id>")
            return False
        self._queue.append((kind, frame, meta))
        self._kick()
        return True

    def room(self) -> int:
        return self.max_queue - len(self._queue)

    def wait_for_room(self, want: int, timeout: float) -> bool:
        """Block the caller (a backlog replay, never the hub) until `want` frames fit."""
        deadline = time.monotonic() + timeout
        while self.closing is None and self.room() < want:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._room = Event()
            self._room.wait(min(left, 1.0))
        return self.closing is None

    def drop_durable(self) -> None:
        """Forget queued durable frames (a resume re-reads them from the stream)."""
        self._queue = deque(item for item in self._queue if item[0] != _DURABLE)  # keeps _REST

    def _write_now(self, frame: str, meta: Any) -> bool:
        """Write without waiting; True when the frame is out or its tail handed to a writer."""
        sock = self.ws.sock
        assert isinstance(sock, SerializedSocket) and self._fd is not None
        if not self.ws.connected or not sock.lock.acquire(blocking=False):
            return False
        try:
            if self._plain is not None and self._plain.state is ConnectionState.OPEN:
                data = text_frame(frame)
            else:  # extensions, or not open (wsproto raises LocalProtocolError)
                data = self.ws.ws.send(TextMessage(data=frame))
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                n = 0
        except (OSError, LocalProtocolError):
            sock.lock.release()
            return False  # the queued path reports the broken socket
        if n == len(data):
            sock.lock.release()
            if meta is not None:
                self.on_delivered(self, meta[0], meta[1])
            return True
        self._queue.appendleft((_REST, data[n:], meta))  # the writer now owns the lock
        self._writer = gevent.spawn(self._drain)
        return True

    def _kick(self) -> None:
        if self._writer is None:
            self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        ws = self.ws
        holding = False  # the socket lock, inherited with a _REST item
        try:
            while self._queue:
                kind, payload, meta = self._queue.popleft()
                if kind == _REST:
                    holding = True
                    ws.sock.raw.sendall(payload)
                    ws.sock.lock.release()
                    holding = False
                elif kind == _CLOSE:
                    self._queue.clear()
                    with suppress(*_WRITE_ERRORS):
                        ws.close(payload[0], payload[1])
                    ws.event.set()  # wake the session's receive() so it ends
                    return
                elif kind == _PING:
                    ws.sock.send(ws.ws.send(Ping()))
                else:
                    ws.send(payload)
                if meta is not None:
                    self.on_delivered(self, meta[0], meta[1])
                if self._room is not None:
                    self._room.set()
        except _WRITE_ERRORS:
            self._queue.clear()
            ws.connected = False
            ws.event.set()
        except Exception:
            logger.exception("writer failed", extra={"user_id": self.user_id})
            self._queue.clear()
            ws.connected = False
            ws.event.set()
        finally:
            if holding:
                ws.sock.lock.release()
            self._writer = None

    # --- closing ------------------------------------------------------------------------------

    def close(self, code: int, why: str, grace: float | None = None) -> None:
        """Close with `code` after what is being written now; queued events are dropped (the
        client resumes from the last id it got). A peer that does not take the close frame
        within `grace` seconds (default: the configured close grace) is cut off."""
        if self.closing is not None:
            return
        self.closing = int(code)
        self._queue = deque(item for item in self._queue if item[0] == _REST)
        self._queue.append((_CLOSE, (int(code), protocol.reason(why)), None))
        self._kick()
        if self._room is not None:
            self._room.set()
        gevent.spawn_later(self.close_grace if grace is None else grace, self.abort)

    def abort(self) -> None:
        """Cut the TCP connection: unblocks a writer stuck on a full socket and the reader."""
        if self._writer is None and not self.ws.connected and not self.ws.thread.is_alive():
            return
        with suppress(OSError):
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        self.ws.connected = False
        self.ws.event.set()

    def finish(self) -> None:
        """Wait (bounded) for the close handshake, then make sure the socket is done."""
        self.ws.thread.join(timeout=self.close_grace)
        if self.ws.thread.is_alive() or self._writer is not None:
            self.abort()
