"""What is settled before a socket's handshake: the hub, the token, the stream position.

flask-sock sends the handshake response as soon as the view builds its `Server`, and the client
may post the moment it sees the socket open: that event must not fall before the socket's start.
So the endpoint's `before_request` hook calls `open_socket` first (docs/websocket.md, "Where a
new socket starts"), and the session acts on the `Opening` right after the handshake.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import request
from redis import RedisError

from core.services import Services
from domain import apikeys
from domain.errors import DomainError, Unauthorized
from domain.principals import Principal
from web.auth import authenticate, codec
from web.live.protocol import Close, StreamId
from web.live.settings import LiveSettings

if TYPE_CHECKING:  # gevent is imported only where sockets are served, not by workers or CLI
    from web.live.hub import Hub

logger = logging.getLogger(__name__)


@dataclass
class Opening:
    """What is settled before the handshake, for the session to act on right after it."""

    hub: Hub | None = None
    refusal: tuple[Close, str] | None = None  # close with this as soon as the socket is open
    principal: Principal | None = None  # from a token that came with the request
    expires_at: float = 0.0
    start: StreamId | None = None  # where the stream starts unless the client names `since`


def open_socket(svc: Services, settings: LiveSettings) -> Opening:
    """Everything the handshake must not wait for: the hub, the token, the start position.

    The start is fixed here, before the client can see the socket open, so "only events after
    the connection" holds exactly (docs/websocket.md, "Where to start"). With a token, it is the
    end of the user's stream now. Without one the user is not known until the first frame, so
    it is the moment itself: stream ids begin with Redis's clock, and `Replay.clock_position`
    returns only once that millisecond is over, so every event appended to any stream after the
    handshake has a larger id and every one appended before the upgrade began has not.
    """
    from web.live.hub import hub_for  # gevent is imported only where sockets are served

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
                opening.start = hub.replay.clock_position()
            return opening
        try:
            opening.principal, opening.expires_at = authenticate_user(token)
        except DomainError as exc:
            opening.refusal = (Close.UNAUTHORIZED, exc.detail)
            return opening
        if since is None:
            assert opening.principal.user_id is not None
            opening.start = hub.replay.position_now(opening.principal.user_id)
    except RedisError:
        logger.warning("cannot fix a new socket's stream position", exc_info=True)
        opening.refusal = (Close.INTERNAL, "live events unavailable: reconnect later with since")
    return opening


def authenticate_user(token: str) -> tuple[Principal, float]:
    """A user principal and when its token stops being accepted (exp plus the leeway)."""
    if apikeys.looks_like_key(token):
        raise Unauthorized("live events are per user: connect with a user token, not an API key")
    tokens = codec()
    claims = tokens.decode(token)
    return authenticate(token), float(claims["exp"]) + tokens.leeway


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
