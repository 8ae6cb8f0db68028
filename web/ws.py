"""`GET /v1/ws`: the live event stream of one user (contract in API.md, details in
docs/websocket.md).

A session authenticates (URL token, header or first frame), registers with this process's hub,
positions itself in the user's stream (`since`, or now) and then serves client frames until
either side closes. Events reach the socket only through the hub and its send queue.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app, request
from flask_sock import Sock
from redis import RedisError
from simple_websocket import ConnectionClosed, Server
from sqlalchemy.exc import SQLAlchemyError

from core.services import Services, services
from domain import apikeys
from domain.errors import DomainError, Unauthorized
from domain.messages import mark_read
from domain.principals import Principal
from web.auth import authenticate, codec
from web.live import protocol
from web.live.protocol import Close
from web.live.settings import LiveSettings
from web.live.views import bp as presence_bp

if TYPE_CHECKING:  # gevent is imported only where sockets are served, not by workers or CLI
    from web.hub import Hub
    from web.live.connection import Connection

logger = logging.getLogger(__name__)

sock = Sock()
bp = Blueprint("live", __name__)

MAX_ID_CHARS = 64
TYPING_MEMORY = 256  # conversations whose last typing time a socket remembers
HARD_FRAME_FACTOR = 16


@sock.route("/v1/ws", bp=bp)
def live_events(ws: Server) -> None:
    """Stream the caller's events live, after replaying those since `?since=<id>`."""
    LiveSession(ws, services(), current_app.extensions["parley_live"]).run()


def init_app(app: Flask) -> None:
    settings = LiveSettings.from_env()
    app.extensions["parley_live"] = settings
    # simple-websocket cuts the TCP connection at its limit (the client may never see the close
    # frame), so its limit is only a memory guard; frames over max_frame get a proper 1009.
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS", {"max_message_size": HARD_FRAME_FACTOR * settings.max_frame}
    )
    sock.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(presence_bp)


class LiveSession:
    """One socket from handshake to close; runs in the request's greenlet."""

    def __init__(self, ws: Server, svc: Services, settings: LiveSettings) -> None:
        self.ws = ws
        self.svc = svc
        self.settings = settings

    def run(self) -> None:
        from web.hub import hub_for
        from web.live.connection import Connection

        self._prepare_socket()

        try:
            hub = hub_for(self.svc, self.settings)
        except RuntimeError as exc:
            logger.error("%s", exc)
            self._close_now(Close.INTERNAL, str(exc))
            return
        if hub.stopping:
            self._close_now(Close.GOING_AWAY, "server shutting down: try another node")
            return
        since = request.args.get("since")
        token = request.args.get("token") or _bearer()
        if token is None:
            token, since = self._await_auth_frame(since)
            if token is None:
                return
        try:
            principal, expires_at = _authenticate(token)
        except DomainError as exc:
            self._close_now(Close.UNAUTHORIZED, exc.detail)
            return
        conn = Connection(
            self.ws,
            principal,
            expires_at,
            self.settings.send_queue,
            self.settings.close_grace_s,
            hub.note_delivered,
        )
        hub.register(conn)
        try:
            hub.start_stream(conn, since)
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
            elif msg["type"] == "auth" and isinstance(msg.get("token"), str):
                return msg["token"], _str(msg.get("since")) or since
            elif msg["type"] == "resume" and isinstance(msg.get("since"), str):
                since = msg["since"]
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
            if isinstance(msg, str):
                conn.offer_ephemeral(protocol.error(msg))
                continue
            handler = FRAME_HANDLERS.get(msg["type"])
            if handler is None:
                conn.offer_ephemeral(
                    protocol.error(
                        f"unknown frame type {msg['type'][:40]!r}; expected one of "
                        + ", ".join(sorted(FRAME_HANDLERS))
                    )
                )
                continue
            try:
                handler(self, hub, conn, msg)
            except DomainError as exc:
                conn.offer_ephemeral(protocol.error(exc.detail))
            except (SQLAlchemyError, RedisError):
                logger.warning("%s frame failed", msg["type"], exc_info=True)
                conn.offer_ephemeral(protocol.error("temporarily unavailable: try again"))

    # --- client frames --------------------------------------------------------------------------

    def _on_ping(self, hub: Hub, conn: Connection, msg: dict[str, Any]) -> None:
        conn.offer_ephemeral(protocol.PONG)

    def _on_typing(self, hub: Hub, conn: Connection, msg: dict[str, Any]) -> None:
        cid = _str(msg.get("conversation_id"))
        if cid is None:
            conn.offer_ephemeral(protocol.error("typing needs a conversation_id (a string)"))
            return
        now = time.monotonic()
        if conn.typing_at is None:
            conn.typing_at = {}
        last = conn.typing_at.get(cid)
        if last is not None and now - last < self.settings.typing_interval_s:
            return  # clients send on every keystroke; one event per interval is plenty
        members = hub.members(cid)
        if conn.user_id not in members:
            conn.offer_ephemeral(protocol.error(f"you are not a participant of conversation {cid}"))
            return
        if len(conn.typing_at) >= TYPING_MEMORY:
            conn.typing_at.clear()
        conn.typing_at[cid] = now
        hub.typing(conn, cid, members)

    def _on_read(self, hub: Hub, conn: Connection, msg: dict[str, Any]) -> None:
        cid = _str(msg.get("conversation_id"))
        seq = msg.get("seq")
        if cid is None or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            conn.offer_ephemeral(
                protocol.error("read needs a conversation_id (string) and a seq (integer >= 0)")
            )
            return
        with self.svc.Session.begin() as s:
            mark_read(s, conn.principal, cid, seq)

    def _on_resume(self, hub: Hub, conn: Connection, msg: dict[str, Any]) -> None:
        since = _str(msg.get("since"))
        if since is None:
            conn.offer_ephemeral(protocol.error("resume needs since: the last id you received"))
            return
        hub.start_stream(conn, since)

    def _on_auth(self, hub: Hub, conn: Connection, msg: dict[str, Any]) -> None:
        """A fresh token for the same user extends the session past the old token's expiry."""
        token = _str(msg.get("token"))
        if token is None:
            conn.offer_ephemeral(protocol.error("auth needs a token"))
            return
        principal, expires_at = _authenticate(token)
        if principal.user_id != conn.user_id:
            conn.offer_ephemeral(
                protocol.error("a socket serves one user: open another one for this token")
            )
            return
        conn.principal, conn.expires_at = principal, expires_at


Handler = Callable[[LiveSession, "Hub", "Connection", dict[str, Any]], None]
FRAME_HANDLERS: dict[str, Handler] = {
    "ping": LiveSession._on_ping,
    "typing": LiveSession._on_typing,
    "read": LiveSession._on_read,
    "resume": LiveSession._on_resume,
    "auth": LiveSession._on_auth,
}


def _authenticate(token: str) -> tuple[Principal, float]:
    """A user principal and when its token stops being accepted (exp plus the leeway)."""
    if apikeys.looks_like_key(token):
        raise Unauthorized("live events are per user: connect with a user token, not an API key")
    tokens = codec()
    claims = tokens.decode(token)
    return authenticate(token), float(claims["exp"]) + tokens.leeway


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


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


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS else None
