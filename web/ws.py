"""`GET /v1/ws`: the live event stream of one user (contract in API.md, details in
docs/websocket.md).

Before the handshake (flask-sock sends it when the view builds its `Server`), `_before_upgrade`
refuses browser pages of origins not allowed (403), authenticates a token that came with the
request and fixes where the socket starts in its user's stream: the client may post the moment
it sees the socket open, and that event must not fall before the start. The session then
authenticates a first-frame token if needed, registers with this process's hub, starts the
stream there (or after `since`) and serves client frames until either side closes. Events
reach the socket only through the hub and its send queue.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, g, request
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
from web.errors import problem
from web.live import protocol
from web.live.asyncapi import bp as asyncapi_bp
from web.live.frames import CLIENT_FRAMES, load_client_frame
from web.live.protocol import Close, StreamId
from web.live.settings import LiveSettings
from web.live.views import bp as presence_bp
from web.security import origin_refused, parse_origins

if TYPE_CHECKING:  # gevent is imported only where sockets are served, not by workers or CLI
    from web.hub import Hub
    from web.live.connection import Connection

logger = logging.getLogger(__name__)

sock = Sock()
bp = Blueprint("live", __name__)

TYPING_MEMORY = 256  # conversations whose last typing time a socket remembers
HARD_FRAME_FACTOR = 16


@dataclass
class Opening:
    """What is settled before the handshake, for the session to act on right after it."""

    hub: Hub | None = None
    refusal: tuple[Close, str] | None = None  # close with this as soon as the socket is open
    principal: Principal | None = None  # from a token that came with the request
    expires_at: float = 0.0
    start: StreamId | None = None  # where the stream starts unless the client names `since`


@bp.before_request
def _before_upgrade() -> Response | None:
    """Refuse other sites' pages; settle the token and the stream position before the
    handshake (once it is sent, the client may post, and that event must reach the socket)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin_refused(
        origin, current_app.extensions["parley_live_origins"], request.host
    ):
        return problem(
            403,
            "Forbidden",
            f"pages from origin {origin[:100]!r} may not open live sockets here: the server's "
            "PARLEY_CORS_ORIGINS does not list it",
        )
    g.live_opening = _open(services(), current_app.extensions["parley_live"])
    return None


@sock.route("/v1/ws", bp=bp)
def live_events(ws: Server) -> None:
    """Stream the caller's events live, after replaying those since `?since=<id>`."""
    opening: Opening = g.live_opening
    LiveSession(ws, services(), current_app.extensions["parley_live"], opening).run()


def _open(svc: Services, settings: LiveSettings) -> Opening:
    """Everything the handshake must not wait for: the hub, the token, the start position.

    The start is fixed here, before the client can see the socket open, so "only events after
    the connection" holds exactly (docs/websocket.md, "Where to start"). With a token, it is the
    end of the user's stream now. Without one the user is not known until the first frame, so
    it is the moment itself: stream ids begin with Redis's clock, and `Hub.clock_position`
    returns only once that millisecond is over, so every event appended to any stream after the
    handshake has a larger id and every one appended before the upgrade began has not.
    """
    from web.hub import hub_for  # gevent is imported only where sockets are served

    try:
        hub = hub_for(svc, settings)
    except RuntimeError as exc:
        logger.error("%s", exc)
        return Opening(refusal=(Close.INTERNAL, str(exc)))
    if hub.stopping:
        return Opening(refusal=(Close.GOING_AWAY, "server shutting down: try another node"))
    opening = Opening(hub=hub)
    since = request.args.get("since")
    token = request.args.get("token") or _bearer()
    try:
        if token is None:
            if since is None:  # the auth frame may still name one; then this goes unused
                opening.start = hub.clock_position()
            return opening
        try:
            opening.principal, opening.expires_at = _authenticate(token)
        except DomainError as exc:
            opening.refusal = (Close.UNAUTHORIZED, exc.detail)
            return opening
        if since is None:
            assert opening.principal.user_id is not None
            opening.start = hub.position_now(opening.principal.user_id)
    except RedisError:
        logger.warning("cannot fix a new socket's stream position", exc_info=True)
        opening.refusal = (Close.INTERNAL, "live events unavailable: reconnect later with since")
    return opening


def init_app(app: Flask) -> None:
    settings = LiveSettings.from_env()
    app.extensions["parley_live"] = settings
    app.extensions["parley_live_origins"] = parse_origins(
        app.extensions["parley"].settings.cors_origins
    )
    # simple-websocket cuts the TCP connection at its limit (the client may never see the close
    # frame), so its limit is only a memory guard; frames over max_frame get a proper 1009.
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS", {"max_message_size": HARD_FRAME_FACTOR * settings.max_frame}
    )
    sock.init_app(app)
    app.register_blueprint(bp)
    app.register_blueprint(presence_bp)
    app.register_blueprint(asyncapi_bp)  # GET /asyncapi.json: this endpoint's protocol


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
            hub.start_stream(conn, since, opening.start)
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
        members = hub.members(cid)
        if conn.user_id not in members:
            conn.offer_ephemeral(protocol.error(f"you are not a participant of conversation {cid}"))
            return
        if len(conn.typing_at) >= TYPING_MEMORY:
            conn.typing_at.clear()
        conn.typing_at[cid] = now
        hub.typing(conn, cid, members)

    def _on_read(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        with self.svc.Session.begin() as s:
            mark_read(s, conn.principal, frame["conversation_id"], frame["seq"])

    def _on_resume(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        hub.start_stream(conn, frame["since"])

    def _on_auth(self, hub: Hub, conn: Connection, frame: dict[str, Any]) -> None:
        """A fresh token for the same user extends the session past the old token's expiry."""
        principal, expires_at = _authenticate(frame["token"])
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
