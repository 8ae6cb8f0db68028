"""One socket from handshake to close: authentication, client frames, the way out.

The session runs in the request's greenlet. It closes at once with the endpoint's refusal, or
waits for a first-frame token when none came with the request (answering `ping`, remembering
`resume`), registers with this process's hub, starts the stream there (after `since`, or at
the position the endpoint fixed before the handshake) and serves client frames until either
side closes, dispatched by the frame table (frames.py): a handler without an entry, or an
entry without a handler, stops the import.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import request
from redis import RedisError
from simple_websocket import ConnectionClosed, Server
from sqlalchemy.exc import SQLAlchemyError

from core.services import Services
from domain.errors import DomainError
from domain.message_actions import mark_read
from web.live import protocol
from web.live.frames import CLIENT_FRAMES, load_client_frame
from web.live.opening import Opening, authenticate_user
from web.live.protocol import Close
from web.live.settings import LiveSettings

if TYPE_CHECKING:  # gevent is imported only where sockets are served, not by workers or CLI
    from web.live.connection import Connection
    from web.live.hub import Hub

logger = logging.getLogger(__name__)

TYPING_MEMORY = 256  # conversations whose last typing time a socket remembers


class LiveSession:
    """One socket from handshake to close; runs in the request's greenlet."""

    def __init__(self, ws: Server, svc: Services, settings: LiveSettings, opening: Opening) -> None:
        self.ws = ws
        self.svc = svc
        self.settings = settings
        self.opening = opening

    def run(self) -> None:
        from web.live.connection import Connection

        self._prepare_socket()
        opening = self.opening
        hub = opening.hub
        if opening.refusal is not None or hub is None:
            code, why = opening.refusal or (Close.INTERNAL, "internal error")
            self._close_now(code, why)
            return
        since = request.args.get("since")
        if opening.principal is not None:
            principal, expires_at = opening.principal, opening.expires_at
        else:
            token, since = self._await_auth_frame(since)
            if token is None:
                return
            try:
                principal, expires_at = authenticate_user(token)
            except DomainError as exc:
                self._close_now(Close.UNAUTHORIZED, exc.detail)
                return
        conn = Connection(
            self.ws,
            principal,
            expires_at,
            self.settings.send_queue,
            self.settings.close_grace_s,
            hub.delivered.note,
        )
        hub.register(conn)
        try:
            hub.replay.start_stream(conn, since, opening.start)
            self._serve(hub, conn)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("live session failed", extra={"user_id": conn.user_id})
            conn.close(Close.INTERNAL, "internal error: reconnect with since=<last id>")
        finally:
            hub.unregister(conn)
            conn.finish()

    def _prepare_socket(self) -> None:
        from web.live.connection import SerializedSocket

        raw = self.ws.sock
        if self.settings.sndbuf > 0:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.sndbuf)
        self.ws.sock = SerializedSocket(raw)

    def _close_now(self, code: int, why: str) -> None:
        """Close before a Connection (and its writer) exists."""
        try:
            self.ws.close(int(code), protocol.reason(why))
        except ConnectionClosed:
            return
        self.ws.thread.join(timeout=self.settings.close_grace_s)

    def _await_auth_frame(self, since: str | None) -> tuple[str | None, str | None]:
        """No token came with the request: the first frames must bring one, in time."""
        deadline = time.monotonic() + self.settings.auth_timeout_s
        while True:
            left = deadline - time.monotonic()
            raw = self.ws.receive(timeout=max(left, 0.0)) if left > 0 else None
            if raw is None:
                if self.ws.connected:
                    self._close_now(
                        Close.UNAUTHORIZED,
                        f"no token within {self.settings.auth_timeout_s:g}s: send "
                        '{"type":"auth","token":...} first',
                    )
                return None, since
            if len(raw) > self.settings.max_frame:
                self._close_now(
                    Close.TOO_BIG, f"frames are limited to {self.settings.max_frame} bytes"
                )
                return None, since
            msg = _parse(raw)
            if isinstance(msg, str):
                self.ws.send(protocol.error(msg))
                continue
            frame = load_client_frame(msg)
            if msg["type"] == "auth":
                if isinstance(frame, str):
                    self._close_now(Close.UNAUTHORIZED, frame)
                    return None, since
                return frame["token"], frame.get("since") or since
            if isinstance(frame, str):
                self.ws.send(protocol.error(frame))
            elif msg["type"] == "resume":
                since = frame["since"]
            elif msg["type"] == "ping":
                self.ws.send(protocol.PONG)
            else:
                self.ws.send(protocol.error('authenticate first: {"type":"auth","token":...}'))

    def _serve(self, hub: Hub, conn: Connection) -> None:
        while True:
            if conn.closing is not None:
                timeout = self.settings.close_grace_s + 1.0
            else:
                timeout = max(0.0, conn.expires_at - time.time())
            raw = self.ws.receive(timeout=timeout)  # ConnectionClosed once closed
            if raw is None:
                if conn.closing is None and time.time() >= conn.expires_at:
                    conn.close(
                        Close.TOKEN_EXPIRED,
                        "token expired: reconnect with a fresh token and since=<last id>",
                    )
                elif conn.closing is not None:
                    conn.abort()
                continue
            conn.last_rx = time.monotonic()
            if conn.closing is not None:
                continue
            if len(raw) > self.settings.max_frame:
                conn.close(Close.TOO_BIG, f"frames are limited to {self.settings.max_frame} bytes")
                continue
            msg = _parse(raw)
            frame = msg if isinstance(msg, str) else load_client_frame(msg)
            if isinstance(frame, str):
                conn.offer_ephemeral(protocol.error(frame))
                continue
            assert isinstance(msg, dict)
            try:
                FRAME_HANDLERS[msg["type"]](self, hub, conn, frame)
            except DomainError as exc:
                conn.offer_ephemeral(protocol.error(exc.detail))
            except (SQLAlchemyError, RedisError):
                logger.warning("%s frame failed", msg["type"], exc_info=True)
                conn.offer_ephemeral(protocol.error("temporarily unavailable: try again"))

    # --- client frames --------------------------------------------------------------------------

    def _on_ping(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        conn.offer_ephemeral(protocol.PONG)

    def _on_typing(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        cid: str = frame["conversation_id"]
        now = time.monotonic()
        if conn.typing_at is None:
            conn.typing_at = {}
        last = conn.typing_at.get(cid)
        if last is not None and now - last < self.settings.typing_interval_s:
            return  # clients send on every keystroke; one event per interval is plenty
        members = hub.typing.members(cid)
        if conn.user_id not in members:
            conn.offer_ephemeral(protocol.error(f"you are not a participant of conversation {cid}"))
            return
        if len(conn.typing_at) >= TYPING_MEMORY:
            conn.typing_at.clear()
        conn.typing_at[cid] = now
        hub.typing.publish(conn, cid, members)

    def _on_read(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        with self.svc.Session.begin() as s:
            mark_read(s, conn.principal, frame["conversation_id"], frame["seq"])

    def _on_resume(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        hub.replay.start_stream(conn, frame["since"])

    def _on_auth(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        """A fresh token for the same user extends the session past the old token's expiry."""
        principal, expires_at = authenticate_user(frame["token"])
        if principal.user_id != conn.user_id:
            conn.offer_ephemeral(
                protocol.error("a socket serves one user: open another one for this token")
            )
            return
        conn.principal, conn.expires_at = principal, expires_at


# Client frames with their validated fields (web/live/frames.py), by type.
Handler = Callable[[LiveSession, "Hub", "Connection", dict[str, Any]], None]
FRAME_HANDLERS: dict[str, Handler] = {
    "ping": LiveSession._on_ping,
    "typing": LiveSession._on_typing,
    "read": LiveSession._on_read,
    "resume": LiveSession._on_resume,
    "auth": LiveSession._on_auth,
}
if set(FRAME_HANDLERS) != set(CLIENT_FRAMES):  # the document and the code say the same
    raise RuntimeError(
        f"client frames handled {sorted(FRAME_HANDLERS)} but described {sorted(CLIENT_FRAMES)}"
    )


def _parse(raw: str | bytes) -> dict[str, Any] | str:
    """A client frame as a dict with a string `type`, or what is wrong with it."""
    if isinstance(raw, bytes):
        return "send JSON text frames, not binary ones"
    try:
        msg = json.loads(raw)
    except ValueError:
        return "the frame is not valid JSON"
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return 'a frame is a JSON object with a string "type"'
    return msg
