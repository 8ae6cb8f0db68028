"""`GET /v1/ws`: the live event stream of one user (contract in api.md, details in
docs/websocket.md).

Before the handshake (flask-sock sends it when the view builds its `Server`), `_before_upgrade`
refuses browser pages of origins not allowed (403), authenticates a token that came with the
request and fixes where the socket starts in its user's stream (opening.py): the client may
post the moment it sees the socket open, and that event must not fall before the start. The
view then hands the socket to a `LiveSession` (session.py) until either side closes. Events
reach the socket only through the hub and its send queue.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, g, request
from flask_sock import Sock
from simple_websocket import Server

from core.services import services
from web.errors import problem
from web.live.opening import Opening, open_socket
from web.live.session import LiveSession
from web.live.settings import LiveSettings
from web.security import origin_refused, parse_origins

sock = Sock()
bp = Blueprint("live", __name__)

HARD_FRAME_FACTOR = 16


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
    g.live_opening = open_socket(services(), current_app.extensions["parley_live"])
    return None


@sock.route("/v1/ws", bp=bp)
def live_events(ws: Server) -> None:
    """Stream the caller's events live, after replaying those since `?since=<id>`."""
    opening: Opening = g.live_opening
    LiveSession(ws, services(), current_app.extensions["parley_live"], opening).run()


def configure(app: Flask) -> None:
    """The endpoint's settings and origins on `app`, and flask-sock bound to it."""
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
