"""Live delivery: `GET /v1/ws`, the hub that feeds its sockets, and what both use.

- `endpoint.py`: the blueprint and `sock`; before the handshake, the Origin check and
  `opening.py` (the hub, the token, where the socket starts); the view runs a `session.py`
  `LiveSession` (authentication, client frames, close codes).
- `hub.py`: one per process (started with its first socket): local sockets by user, lifecycle,
  heartbeat; `dispatch.py` its Redis subscriber and wake-up dispatch, `replay.py` start positions
  and replay, `presence_writer.py` this node's presence, `cursors.py` delivered cursors,
  `typing_relay.py` typing events. Their database reads and writes are in `domain/live.py`.
- `connection.py` a socket's send queue, `streams.py` batched stream reads, `render.py`
  per-viewer rendering, `presence.py` the presence store, `views.py` the presence REST view.
- `frames.py` every frame's type and schema, `protocol.py` wire format and close codes,
  `asyncapi.py` the generated `/asyncapi.json`, `settings.py` tuning.

Modules that import gevent (the hub and what it runs) are imported only where a socket is
served, not by workers or the CLI, which build the app too.
"""

from __future__ import annotations

from flask import Blueprint, Flask

from web.live.asyncapi import bp as asyncapi_bp
from web.live.endpoint import bp, configure, sock
from web.live.views import bp as presence_bp

__all__ = ["BLUEPRINTS", "asyncapi_bp", "bp", "init_app", "presence_bp", "sock"]

# GET /v1/ws, GET /v1/conversations/{cid}/presence, GET /asyncapi.json (the socket's protocol).
BLUEPRINTS: tuple[Blueprint, ...] = (bp, presence_bp, asyncapi_bp)


def init_app(app: Flask) -> None:
    """Settings, origins and flask-sock on `app` (create_app registers BLUEPRINTS)."""
    configure(app)
