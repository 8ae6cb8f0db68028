"""Liveness and readiness."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint
from sqlalchemy import text

from core.services import services
from web.http import doc
from web.schemas import HealthSchema

bp = Blueprint("health", __name__)

_WORKER_CACHE_S = 2.0
_worker_seen: dict[str, float] = {"at": 0.0, "ok": 0.0}


@bp.get("/healthz")
@doc("Liveness: the process answers", responses={200: HealthSchema}, auth=False, tag="ops")
def healthz() -> dict[str, Any]:
    """Answer while the process runs; says nothing about dependencies."""
    return {"status": "ok", "checks": {}}


def _worker_alive() -> bool:
    now = time.monotonic()
    if now - _worker_seen["at"] < _WORKER_CACHE_S:
        return bool(_worker_seen["ok"])
    replies = services().tasks.control.ping(timeout=1.0)
    _worker_seen.update(at=now, ok=1.0 if replies else 0.0)
    return bool(replies)


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
