"""Liveness and readiness."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app
from sqlalchemy import text

from core.services import services
from web.http import doc
from web.schemas.common import HealthSchema

bp = Blueprint("health", __name__)

WORKER_CACHE_S = 2.0  # a ping costs up to 1 s; probes every second must not pile up


@bp.get("/healthz")
@doc("Liveness: the process answers", responses={200: HealthSchema}, auth=False, tag="ops")
def healthz() -> dict[str, Any]:
    """Answer while the process runs; says nothing about dependencies."""
    return {"status": "ok", "checks": {}}


def _worker_alive() -> bool:
    """A positive answer is cached briefly per process; a negative one is re-checked."""
    seen: dict[str, float] = current_app.extensions.setdefault("parley_worker_seen", {"at": 0.0})
    now = time.monotonic()
    if now - seen["at"] < WORKER_CACHE_S:
        return True
    if services().tasks.control.ping(timeout=1.0):
        seen["at"] = now
        return True
    return False


@bp.get("/readyz")
@doc(
    "Readiness: database, Redis and at least one worker answer",
    responses={200: HealthSchema, 503: HealthSchema},
    auth=False,
    tag="ops",
)
def readyz() -> tuple[dict[str, Any], int]:
    """200 only when the database, Redis and a Celery worker all answer."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        checks["worker"] = "ok" if _worker_alive() else "error: no worker answered"
    except Exception as exc:
        checks["worker"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
