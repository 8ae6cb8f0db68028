"""The Celery entry point: `celery -A worker worker -Q pipeline,media,push,maintenance` and
`celery -A worker beat` (see Procfile).

It loads Settings the way the web does (the environment, then `.env`), so a worker started by
hand behaves like the web node beside it, and builds the Celery app from them
(core/celery_app.py, settings in celery_config.py). Each worker process builds the Flask app
once, after the fork, and runs every task inside its app context, where tasks reach the
process's services. This and web/wsgi.py are the only modules that import `web`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Task, signals
from flask import Flask, current_app, has_app_context

from core import logs, metrics
from core.celery_app import SENT_AT_HEADER, make_celery
from core.config import load_settings
from domain.retention.key_forgetter import KeyForgetter

# Parley runs from its root. Celery puts the working directory on sys.path only while it loads
# this module: keep the root there for what is imported later (the tasks, `web` in each child).
ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

timing_log = logging.getLogger("tasks.timing")

_flask_app: Flask | None = None


def flask_app() -> Flask:
    """This process's Flask app, built on first use: in a pool child, when it starts."""
    global _flask_app
    if _flask_app is None:
        from web import create_app  # the worker's parent and beat never need it

        # No round trip to test each pooled connection before use: a task that meets one the
        # database dropped fails on its first statement, and TEMPORARY (tasks/retry.py) retries
        # it on a fresh one. Two round trips fewer per moderation batch on PostgreSQL.
        _flask_app = create_app({"db_pre_ping": False})
        # What is loaded now (app, models, libraries) lives as long as the process: keep it
        # out of the collector's full passes, which otherwise stall a task for ~100 ms.
        gc.freeze()
    return _flask_app


class AppContextTask(Task):
    """Runs every task inside the Flask app context, so tasks reach the shared services."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if has_app_context():  # called in-process by code that already has one
            return self.run(*args, **kwargs)
        with flask_app().app_context():
            return self.run(*args, **kwargs)


celery_app = make_celery(load_settings(), task_cls=AppContextTask)
celery_app.set_default()  # the tasks' `shared_task` proxies resolve to it in this process


# --- each pool child ------------------------------------------------------------------------


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked child must not reuse connections inherited from the parent."""
    if _flask_app is not None:
        _flask_app.extensions["parley"].dispose()


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Build the app when the child starts, not inside its first task (~1 s)."""
    flask_app()


@signals.worker_process_init.connect
def _leave_sigterm_to_the_parent(**_: Any) -> None:
    """Pool children ignore SIGTERM; the main process turns it into a warm shutdown.

    honcho, systemd (KillMode=control-group) and `kill -- -PGID` send SIGTERM to the whole
    process group. Celery resets it to the default in children, so each child would die in the
    middle of its task. Ignored here, the child finishes the task it holds and exits when the
    parent closes the pool; time limits still end a stuck child with SIGKILL.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _metrics_process_dead(**_: Any) -> None:
    """This process's live gauges leave /metrics with it; its counters stay in the totals."""
    metrics.mark_dead(os.getpid())


# --- each task --------------------------------------------------------------------------------

_started: dict[str, float] = {}
_forgetter_pid: int | None = None


@signals.task_prerun.connect
def _follow_shredded_keys(**_: Any) -> None:
    """Each worker process drops keys other processes shred from its key cache: the listener
    starts with the process's first task (whatever the pool), in the app the task runs in."""
    global _forgetter_pid
    if _forgetter_pid == os.getpid():
        return
    _forgetter_pid = os.getpid()
    app = current_app if has_app_context() else flask_app()  # as AppContextTask chooses
    KeyForgetter(app.extensions["parley"]).start()


@signals.task_prerun.connect
def _bind_log_context(task_id: str = "", task: Any = None, **_: Any) -> None:
    """Every log line of a task carries its id and the request id of the web call behind it."""
    request = getattr(task, "request", None)
    rid = getattr(request, "request_id", None) or (getattr(request, "headers", None) or {}).get(
        "request_id"
    )
    logs.clear()
    logs.bind(task_id=task_id, **({"request_id": rid} if rid else {}))
    _started[task_id] = time.perf_counter()
    _observe_queue_wait(request)


def _observe_queue_wait(request: Any) -> None:
    """Queue lag as each task sees it: publish (or ETA) to start, by the queue it came from."""
    headers = getattr(request, "headers", None) or {}
    sent = getattr(request, SENT_AT_HEADER, None) or headers.get(SENT_AT_HEADER)
    if sent is None:
        return
    try:
        since = float(sent)
    except (TypeError, ValueError):
        return
    eta = getattr(request, "eta", None)
    if isinstance(eta, str):
        with contextlib.suppress(ValueError):
            since = max(since, datetime.fromisoformat(eta).timestamp())
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key") or "unknown"
    metrics.task_waited(queue, time.time() - since)


@signals.task_postrun.connect
def _log_stage_timing(
    task_id: str = "", task: Any = None, state: str | None = None, **_: Any
) -> None:
    """One line per task execution: the stage, how long it took, how it ended."""
    started = _started.pop(task_id, None)
    if started is None or task is None:
        return
    duration = round((time.perf_counter() - started) * 1000, 2)
    timing_log.info(
        "stage %s %s in %.1f ms",
        task.name,
        (state or "done").lower(),
        duration,
        extra={"task": task.name, "duration_ms": duration, "outcome": state or "done"},
    )
    metrics.task_finished(task.name, state or "done", duration / 1000)
