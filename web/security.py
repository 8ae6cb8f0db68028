"""The edge: client addresses behind proxies, CORS allow-list, security headers.

- `PARLEY_TRUSTED_PROXIES=N`: trust the last N `X-Forwarded-For`/`-Proto` hops (the load
  balancer), so per-IP rate limits and `request.is_secure` see the real client. 0 (default)
  trusts none: a client cannot spoof its address with a header.
- `PARLEY_CORS_ORIGINS`: comma-separated origins allowed to call from a browser, or `*`. The API
  authenticates with a bearer header, never a cookie, so credentials are never allowed and `*`
  stays safe; an explicit list is still better (and `*` is refused in production). Preflights
  are answered here, before authentication, as browsers send them without the token.
- A NUL character anywhere in the URL is a 400 (bodies: web/schemas.py refuses it per field).
- Headers: JSON answers get a CSP that forbids everything (nothing in them is a document to
  render), `nosniff`, `DENY` framing, no referrer; HSTS when `PARLEY_HSTS_SECONDS` is set
  (only behind TLS).
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import BadRequest
from werkzeug.middleware.proxy_fix import ProxyFix

from core.config import Settings

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOWED_HEADERS = {"authorization", "content-type", "x-request-id", "range", "if-range"}
EXPOSED_HEADERS = "X-Request-ID, Retry-After, Location, Content-Disposition, ETag"
PREFLIGHT_MAX_AGE_S = 600
CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def parse_origins(raw: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def origin_refused(origin: str | None, allowed: frozenset[str], host: str) -> bool:
    """Whether a WebSocket upgrade must be refused for its `Origin` (web/ws.py).

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
    any_origin = "*" in origins
    hsts = f"max-age={settings.hsts_seconds}; includeSubDomains" if settings.hsts_seconds else ""

    def allowed(origin: str | None) -> bool:
        return bool(origin) and (any_origin or origin in origins)

    @app.before_request
    def _refuse_nul() -> None:
        """A NUL in the URL never names anything, and PostgreSQL refuses it in any query."""
        if "\x00" in request.path or any(
            "\x00" in k + v for k, v in request.args.items(multi=True)
        ):
            raise BadRequest("the URL must not contain NUL characters")

    @app.before_request
    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        resp = Response(status=204)
        origin = request.headers.get("Origin")
        if allowed(origin):
            asked = request.headers.get("Access-Control-Request-Headers", "")
            headers = [h.strip() for h in asked.split(",") if h.strip().lower() in ALLOWED_HEADERS]
            resp.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            if headers:
                resp.headers["Access-Control-Allow-Headers"] = ", ".join(headers)
            resp.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return resp  # without Allow-* headers the browser refuses: nothing else to say

    @app.after_request
    def _headers(resp: Response) -> Response:
        h = resp.headers
        origin = request.headers.get("Origin")
        if origins:
            h.add("Vary", "Origin")
            if allowed(origin):
                h["Access-Control-Allow-Origin"] = "*" if any_origin else str(origin)
                h["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("Content-Security-Policy", CSP)
        if hsts:
            h.setdefault("Strict-Transport-Security", hsts)
        return resp
