"""The edge: client addresses behind proxies, CORS allow-list, security headers.

- `PARLEY_TRUSTED_PROXIES=N`: trust the last N `X-Forwarded-For`/`-Proto` hops (the load
  balancer), so per-IP rate limits and `request.is_secure` see the real client. 0 (default)
  trusts none: a client cannot spoof its address with a header.
- `PARLEY_CORS_ORIGINS`: comma-separated origins allowed to call from a browser, or `*`. The API
  authenticates with a bearer header, never a cookie, so credentials are never allowed and `*`
  stays safe; an explicit list is still better (and `*` is refused in production). flask-cors
  writes the `Access-Control-*` headers; preflights are answered here with an empty 204, before
  authentication (browsers send them without the token), and flask-cors adds the `Allow-*`
  headers to that answer when the origin is listed.
- Text rules (NUL, surrogates, control characters in ids) are web/http.py's, checked first.
- Headers: JSON answers get a CSP that forbids everything (nothing in them is a document to
  render), `nosniff`, `DENY` framing, no referrer, `Cache-Control: no-store` (unless the view
  set its own); HSTS when `PARLEY_HSTS_SECONDS` is set (only behind TLS).
"""

from __future__ import annotations

import re

from flask import Flask, Response, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from core.config import Settings

ALLOWED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
ALLOWED_HEADERS = ["Authorization", "Content-Type", "X-Request-ID", "Range", "If-Range"]
EXPOSED_HEADERS = ["X-Request-ID", "Retry-After", "Location", "Content-Disposition", "ETag"]
PREFLIGHT_MAX_AGE_S = 600
CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def parse_origins(raw: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def origin_refused(origin: str | None, allowed: frozenset[str], host: str) -> bool:
    """Whether a WebSocket upgrade must be refused for its `Origin` (web/live/endpoint.py).

    Browsers send `Origin` with every upgrade and apply no CORS to WebSockets, so this check is
    what stops another site's page from opening sockets with a token it got hold of. Clients
    without `Origin` (servers, apps) are not browsers and pass. `*` allows every origin; so does
    the service's own (its host and port equal the request's `Host`), as a browser lets a
    same-origin page call the REST API too.
    """
    if origin is None or "*" in allowed:
        return False
    origin = origin.strip().rstrip("/")
    if origin in allowed:
        return False
    _, sep, netloc = origin.partition("://")
    return not (sep and host and netloc.lower() == host.lower())


def init_app(app: Flask, settings: Settings) -> None:
    if settings.trusted_proxies > 0:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0)  # type: ignore[method-assign]
    origins = parse_origins(settings.cors_origins)
    if "*" in origins and settings.env == "production":
        raise RuntimeError(
            "PARLEY_CORS_ORIGINS='*' is refused in production: list the origins of your web apps"
        )
    hsts = f"max-age={settings.hsts_seconds}; includeSubDomains" if settings.hsts_seconds else ""
    if origins:
        CORS(
            app,
            origins="*" if "*" in origins else [_exactly(o) for o in sorted(origins)],
            send_wildcard=True,  # `*` answers `*`, not the caller's Origin echoed back
            methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE_S,
            supports_credentials=False,
            # No Origin, no CORS headers: flask-cors would otherwise list every allowed origin.
            always_send=False,
            # `Vary: Origin` goes on every answer below, also those to an origin off the list:
            # flask-cors adds it only where it allows, and a cache would then serve a refusal
            # to a listed origin.
            vary_header=False,
            # Error answers go through after_request like any other; no need to wrap Flask's
            # exception handlers.
            intercept_exceptions=False,
        )

    @app.before_request
    def _preflight() -> Response | None:
        """Answer a preflight before authentication and the views' hooks: it carries no token.

        Flask's automatic OPTIONS answer would come after the blueprints' `require_auth`. The
        `Access-Control-Allow-*` headers come from flask-cors (after_request), only for a listed
        origin: without them the browser refuses, and there is nothing else to say.
        """
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        return Response(status=204)

    fixed = [
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
        ("Content-Security-Policy", CSP),
        ("Cache-Control", "no-store"),
    ]
    if hsts:
        fixed.append(("Strict-Transport-Security", hsts))
    by_name = [(name.lower(), name, value) for name, value in fixed]

    @app.after_request
    def _headers(resp: Response) -> Response:
        """Each header unless the view set its own (a download's Cache-Control, say): one pass
        over the answer's headers, not one lookup per header."""
        h = resp.headers
        if origins:
            h.add("Vary", "Origin")
        present = {name.lower() for name in h.keys()}  # noqa: SIM118 - Headers, not a dict
        h.extend([(name, value) for low, name, value in by_name if low not in present])
        return resp


def _exactly(origin: str) -> re.Pattern[str]:
    """An origin flask-cors must match whole and literally.

    flask-cors reads a string with `[`, `]`, `*`, `?`… as a regular expression, matched at the
    start only: `http://[::1]:8080` would become a character class (and allow `http://1:8080`).
    """
    return re.compile(re.escape(origin) + r"\Z")
