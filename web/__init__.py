"""The Flask application factory."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request, Response, g, request
from flask.sessions import NullSession, SessionInterface, SessionMixin

from core import logs
from core.celery_app import make_celery
from core.config import load_settings
from core.logs import configure_logging
from core.services import Services, build_services
from domain import outbox

logger = logging.getLogger(__name__)


class NoSessions(SessionInterface):
    """The API authenticates with bearer tokens and keeps no cookie session: every request gets
    the same empty, read-only session at once, instead of Flask looking for a cookie and a
    signing key first (~1% of a POST's CPU)."""

    _none = NullSession()

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return self._none


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Defaults, then the environment, then `test_config` (setting names of core/config.py)."""
    settings = load_settings(test_config)
    settings.moderation_overrides  # noqa: B018 - a bad PARLEY_MODERATION_POLICIES fails here, once
    configure_logging()
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        TESTING=settings.testing,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.session_interface = NoSessions()
    svc: Services = build_services(settings, producer=make_celery(settings))
    outbox.install(svc.Session, svc.tasks)
    app.extensions["parley"] = svc

    from web import (
        attachments,
        auth,
        conversations,
        errors,
        health,
        http,
        limits,
        live,
        messages,
        moderation,
        notifications,
        openapi,
        privacy,
        push,
        search,
        security,
    )
    from web import metrics as web_metrics
    from web.cli import register_cli

    auth.init_app(app, settings)
    errors.register(app)
    # Every blueprint, in one place. Each resource's module holds its `bp`; web/live/ has three
    # (the socket, REST presence, /asyncapi.json).
    for bp in (
        health.bp,
        openapi.bp,
        web_metrics.bp,  # GET /metrics
        conversations.bp,
        messages.bp,
        moderation.bp,
        attachments.bp,
        search.bp,  # GET /v1/search/messages (docs/search.md)
        push.bp,  # /v1/push: subscriptions, VAPID key, dead letters
        notifications.bp,
        privacy.bp,  # retention policies, DELETE /v1/conversations/{cid}, /v1/privacy jobs
        *live.BLUEPRINTS,
    ):
        app.register_blueprint(bp)
    live.init_app(app)  # flask-sock and live settings; the hub starts with the first socket
    register_cli(app)

    @app.before_request
    def _request_id() -> None:
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if 0 < len(rid) <= 64 and rid.isprintable() else uuid.uuid4().hex
        logs.clear()
        logs.bind(request_id=g.request_id)

    http.install(app)  # NUL, surrogates, non-UTF-8 in the URL or token: 400 before any query

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        return resp  # the security headers and Cache-Control: web/security.py

    # Operations (#10): the edge (proxies, CORS, headers), /metrics with request timing and the
    # access log, then rate limits, which wrap views: every blueprint is registered by now.
    security.init_app(app, settings)
    web_metrics.init_app(app)
    limits.init_app(app, settings)
    return app
