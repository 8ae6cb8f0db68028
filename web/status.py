"""`flask --app web status`: is the service healthy, and how much work is waiting?

One screen for an operator: database and Redis reachability, queue depths and lags, the outbox
backlog and its oldest row, which Celery workers answer a ping (by name), push dead letters.
`--json` for scripts. Exit code 1 when the database or Redis is unreachable or no worker
answers, so it also works as a deploy check.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from flask.cli import with_appcontext
from sqlalchemy import text

from core import backlog
from core.services import Services, services

PING_TIMEOUT_S = 1.0


def gather(svc: Services) -> dict[str, Any]:
    report: dict[str, Any] = {
        "database": _check(lambda: _ping_db(svc)),
        "redis": _check(lambda: svc.redis.ping()),
    }
    broker = backlog.broker(svc)
    report["broker"] = {
        "kind": broker.kind,
        "error": broker.error,
        "unacked": broker.unacked,
        "queues": {
            q.name: {"depth": q.depth, "lag_s": _round(q.lag_s), "error": q.error}
            for q in broker.queues
        },
    }
    box = backlog.outbox(svc)
    report["outbox"] = {
        "backlog": box.backlog,
        "oldest_age_s": _round(box.oldest_age_s),
        "error": box.error,
    }
    report["workers"] = _workers(svc)
    report["dead_letters"] = backlog.dead_letters(svc)
    report["ok"] = (
        report["database"] == "ok"
        and report["redis"] == "ok"
        and bool(report["workers"]["answered"])
    )
    return report


def _ping_db(svc: Services) -> None:
    with svc.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def _workers(svc: Services) -> dict[str, Any]:
    started = time.monotonic()
    try:
        replies = svc.tasks.control.ping(timeout=PING_TIMEOUT_S) or []
    except Exception as exc:
        return {"answered": [], "error": f"{type(exc).__name__}: {exc}"}
    names = sorted(name for reply in replies for name in reply)
    return {"answered": names, "waited_s": _round(time.monotonic() - started), "error": None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_text(report: dict[str, Any]) -> str:
    lines = [
        f"database      {report['database']}",
        f"redis         {report['redis']}",
    ]
    broker = report["broker"]
    if broker["error"]:
        lines.append(f"broker        {broker['kind']}: error: {broker['error']}")
    else:
        unacked = broker["unacked"]
        extra = f", {unacked} reserved by workers (unacked)" if unacked is not None else ""
        lines.append(f"broker        {broker['kind']}{extra}")
    for name, q in broker["queues"].items():
        if q["error"]:
            lines.append(f"  {name:<12}error: {q['error']}")
            continue
        lag = "" if q["lag_s"] is None else f", oldest waiting {q['lag_s']:.1f} s"
        lines.append(f"  {name:<12}{q['depth']} waiting{lag}")
    box = report["outbox"]
    if box["error"]:
        lines.append(f"outbox        error: {box['error']}")
    else:
        lines.append(
            f"outbox        {box['backlog']} not done, oldest {box['oldest_age_s']:.1f} s old"
        )
    workers = report["workers"]
    if workers["answered"]:
        lines.append(f"workers       {len(workers['answered'])} answered ping:")
        lines.extend(f"  {name}" for name in workers["answered"])
    else:
        why = workers.get("error") or f"none answered within {PING_TIMEOUT_S:.0f} s"
        lines.append(f"workers       {why}")
    dead = report["dead_letters"]
    lines.append(f"dead letters  {'n/a' if dead is None else dead}")
    lines.append("status        " + ("ok" if report["ok"] else "DEGRADED"))
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
def status_command(as_json: bool) -> None:
    """Show queue depths, outbox backlog, workers, dead letters, database and Redis."""
    report = gather(services())
    click.echo(json.dumps(report, indent=2) if as_json else render_text(report))
    if not report["ok"]:
        raise SystemExit(1)
