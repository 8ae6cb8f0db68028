"""Rate limits (flask-limiter, counters in Redis so every web node shares them).

Views declare what they spend with `@limits("post")`; each rule has a per-user and a per-IP
budget from the environment (`PARLEY_LIMIT_*`, syntax `30/10 seconds`, `600/minute`). At start-up
`init_app` wraps those views in flask-limiter's own `shared_limit` decorators, so the check runs
inside the view call, after authentication, and the per-user key is the verified caller. Server
API keys are the platform's own backend and are not limited here (`exempt_when`).

There are no default or application limits (`default_limits=[]`), and a `request_filter` ends
flask-limiter's `before_request` pass at once on every route that declared none.

Failed authentication is budgeted per IP: every 401 spends one; an address over budget gets
429 on any `/v1` request, before its credentials are even looked at, until the window ends.
The block is remembered in the process that saw the breach, so a blocked client costs no
Redis call; another web process learns it on the client's next failure there.

A 429 is a problem+json answer from web/errors.py with `Retry-After`. If Redis is unreachable
the limits fail open (logged): an outage of the counter store must not stop the service.
Limits apply in tests only when a test sets `rate_limits: "on"`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

import limits as limits_lib
from flask import Flask, Response, g, request
from flask_limiter import Limiter, RateLimitExceeded
from werkzeug.exceptions import TooManyRequests

from core import metrics
from core.config import Settings

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Endpoints owned by other modules, limited by name when they exist.
BY_ENDPOINT: dict[str, tuple[str, ...]] = {"attachments.api.upload": ("upload",)}
BLOCKED_PATHS = ("/v1/", "/metrics")
STORAGE_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Rule:
    name: str
    what: str  # for the problem detail: "too many <what>"
    per_user: str
    per_ip: str

    @property
    def variable(self) -> str:
        return f"PARLEY_LIMIT_{self.name.upper()}_USER / _IP"


def rules(settings: Settings) -> dict[str, Rule]:
    return {
        "post": Rule("post", "messages", settings.limit_post_user, settings.limit_post_ip),
        "upload": Rule("upload", "uploads", settings.limit_upload_user, settings.limit_upload_ip),
        "conversation": Rule(
            "conversation",
            "new conversations",
            settings.limit_conversation_user,
            settings.limit_conversation_ip,
        ),
    }


def limits(*names: str) -> Callable[[F], F]:
    """Mark a view as spending from the named rules (applied by `init_app`)."""

    def mark(fn: F) -> F:
        fn._limits = names  # type: ignore[attr-defined]
        return fn

    return mark


def enabled(settings: Settings) -> bool:
    mode = settings.rate_limits.strip().lower()
    if mode in ("on", "1", "true", "yes"):
        return True
    if mode in ("off", "0", "false", "no"):
        return False
    if mode:
        raise RuntimeError(f"PARLEY_RATE_LIMITS must be on or off, not {settings.rate_limits!r}")
    return not settings.testing


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _user_key() -> str:
    who = g.get("principal")
    return f"user:{who.user_id}" if who is not None and who.user_id else ""


def _is_service() -> bool:
    who = g.get("principal")
    return who is not None and who.is_service


def _parse(value: str, setting: str) -> limits_lib.RateLimitItem:
    try:
        return limits_lib.parse(value)
    except ValueError as exc:
        raise RuntimeError(
            f"{setting}={value!r} is not a rate limit; write e.g. '30/10 seconds' or '600/minute'"
        ) from exc


def init_app(app: Flask, settings: Settings) -> None:
    """Bind a limiter to this app and wrap the views that declared limits.

    Called after every blueprint is registered. One limiter per app: two apps in one process
    (the test suite) keep their own storage.
    """
    all_rules = rules(settings)
    for rule in all_rules.values():
        _parse(rule.per_user, rule.variable)
        _parse(rule.per_ip, rule.variable)
    failed_auth = _parse(settings.limit_failed_auth_ip, "PARLEY_LIMIT_FAILED_AUTH_IP")
    if not enabled(settings):
        return
    chosen: dict[str, list[Rule]] = {}
    for endpoint, view in app.view_functions.items():
        names = getattr(view, "_limits", ()) or BY_ENDPOINT.get(endpoint, ())
        if names:
            chosen[endpoint] = [all_rules[n] for n in names]
    limiter = Limiter(
        key_func=client_ip,
        default_limits=[],  # only what views declare
        storage_uri=settings.redis_url,
        # A hung Redis must not hang requests: give up quickly and fail open.
        storage_options=cast(
            "dict[str, str | int]",
            {"socket_timeout": STORAGE_TIMEOUT_S, "socket_connect_timeout": STORAGE_TIMEOUT_S},
        ),
        strategy="sliding-window-counter",
        key_prefix="parley",
        headers_enabled=False,
        swallow_errors=True,  # storage errors are logged (logger "flask-limiter") and let through
    )
    # flask-limiter checks every request in `before_request` for default and application
    # limits. Parley has none, so on a route without a limit the filter ends that pass before
    # it looks any up (~30 µs left of ~50-80 µs); a limited view is checked from its wrapper.
    limited = frozenset(chosen)
    limiter.request_filter(lambda: request.endpoint not in limited)
    limiter.init_app(app)
    app.extensions["parley_limiter"] = limiter
    for endpoint, rules_of_view in chosen.items():
        app.view_functions[endpoint] = _wrap(limiter, app.view_functions[endpoint], rules_of_view)
    _guard_failed_auth(app, limiter, failed_auth)


def _wrap(limiter: Limiter, view: Callable[..., Any], chosen: list[Rule]) -> Callable[..., Any]:
    limited = view
    for rule in chosen:
        limited = limiter.shared_limit(
            rule.per_user,
            scope=f"{rule.name}:user",
            key_func=_user_key,
            exempt_when=_is_service,
            error_message=f"too many {rule.what}: at most {rule.per_user} per user",
        )(limited)
        limited = limiter.shared_limit(
            rule.per_ip,
            scope=f"{rule.name}:ip",
            exempt_when=_is_service,
            error_message=f"too many {rule.what}: at most {rule.per_ip} per address",
        )(limited)

    @wraps(view)
    def with_retry_after(*args: Any, **kwargs: Any) -> Any:
        try:
            return limited(*args, **kwargs)
        except RateLimitExceeded as exc:
            breached = limiter.current_limit
            wait = breached.window[0] - time.time() if breached is not None else 1.0
            exc.retry_after = max(1, math.ceil(wait))
            metrics.get().rate_limited.labels(str(exc.limit.scope)).inc()
            raise

    return with_retry_after


def _guard_failed_auth(app: Flask, limiter: Limiter, item: limits_lib.RateLimitItem) -> None:
    blocked: dict[str, float] = {}  # ip -> monotonic time the block ends, this process only

    @app.before_request
    def _refuse_blocked() -> None:
        if not blocked or not request.path.startswith(BLOCKED_PATHS):
            return
        ip = client_ip()
        until = blocked.get(ip)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del blocked[ip]
            return
        metrics.get().rate_limited.labels("failed-auth:ip").inc()
        raise TooManyRequests(
            f"too many failed authentications from this address: at most {item} per address",
            retry_after=max(1, math.ceil(left)),
        )

    @app.after_request
    def _count_failure(resp: Response) -> Response:
        if resp.status_code != 401:
            return resp
        ip = client_ip()
        try:
            allowed = limiter.limiter.hit(item, "parley", ip, "failed-auth")
            if allowed:
                return resp
            reset_at = limiter.limiter.get_window_stats(item, "parley", ip, "failed-auth")[0]
        except Exception:
            logger.warning("failed-auth limit not counted (rate limit storage)", exc_info=True)
            return resp
        left = max(1.0, reset_at - time.time())
        blocked[ip] = time.monotonic() + left
        if len(blocked) > 100_000:  # a flood of addresses: forget, Redis still counts
            blocked.clear()
        metrics.get().rate_limited.labels("failed-auth:ip").inc()
        from web.errors import problem

        return problem(
            429,
            "Too Many Requests",
            f"too many failed authentications from this address: at most {item} per address",
            headers={"Retry-After": str(math.ceil(left))},
        )
