"""The Celery app: broker, queues, routes, reliability settings and the beat schedule.

Run a worker with `celery -A celery_config worker -Q pipeline,media,push,maintenance` and beat
with `celery -A celery_config beat` (see Procfile). Ops scale a stage by starting workers with
`-Q <queue>`; routes live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery, Task, signals
from kombu import Queue

if TYPE_CHECKING:
    from flask import Flask

# The app runs from its root: make `web`, `tasks`... importable wherever the worker is started
# from (Celery puts the working directory on sys.path only while it loads this module).
ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUEUES = ("pipeline", "media", "push", "maintenance")
INCLUDE = [
    "tasks.moderate",
    "tasks.fanout",
    "tasks.media",
    "tasks.push",
    "tasks.outbox",
    "tasks.rotation",
    "tasks.retention",
]
# Longer than any countdown/ETA we use, so the Redis broker never hands a waiting task to a
# second worker (kombu restores unacked messages after this many seconds).
VISIBILITY_TIMEOUT_S = 3600

_flask_app: Flask | None = None


def flask_app() -> Flask:
    """The worker's Flask app, built once per process (after the fork) for its app context."""
    global _flask_app
    if _flask_app is None:
        import gc

        from web import create_app

        _flask_app = create_app()
        # What is loaded now (app, models, libraries) lives as long as the process: keep it
        # out of the collector's full passes, which otherwise stall a task for ~100 ms.
        gc.freeze()
    return _flask_app


class AppContextTask(Task):
    """Runs every task inside the Flask app context, so tasks reach the shared services."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from flask import has_app_context

        if has_app_context():
            return self.run(*args, **kwargs)
        with flask_app().app_context():
            return self.run(*args, **kwargs)


def make_celery(broker_url: str | None) -> Celery:
    """A Celery app with Parley's settings; each web/worker process builds one per broker."""
    sweep_s = float(os.environ.get("PARLEY_OUTBOX_SWEEP_S") or 5)
    push_sweep_s = float(os.environ.get("PARLEY_PUSH_SWEEP_S") or 30)
    retention_s = float(os.environ.get("PARLEY_RETENTION_INTERVAL_S") or 600)
    app = Celery("parley", task_cls=AppContextTask, include=INCLUDE)
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=60,
        task_time_limit=90,
        task_default_queue="pipeline",
        task_queues=[Queue(name) for name in QUEUES],
        task_routes={
            "tasks.moderate.*": {"queue": "pipeline"},
            "tasks.fanout.*": {"queue": "pipeline"},
            "tasks.media.*": {"queue": "media"},
            "tasks.push.*": {"queue": "push"},
            "tasks.outbox.*": {"queue": "maintenance"},
            "tasks.rotation.*": {"queue": "maintenance"},
            "tasks.retention.*": {"queue": "maintenance"},
        },
        beat_schedule={
            "outbox-sweep": {
                "task": "tasks.outbox.sweep",
                "schedule": sweep_s,
                "options": {"expires": sweep_s * 2},
            },
            "push-sweep": {  # lost push countdowns, crashed leases, expiry (tasks/push.py)
                "task": "tasks.push.sweep",
                "schedule": push_sweep_s,
                "options": {"expires": push_sweep_s * 2},
            },
            "retention-purge": {  # hide expired messages, delete past the grace period
                "task": "tasks.retention.purge",
                "schedule": retention_s,
                "options": {"expires": retention_s},
            },
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        # Each pool child builds the Flask app at start (`_warm_up`, ~1 s, more on a loaded
        # box): give it longer than Celery's 4 s before the child counts as failed to start.
        worker_proc_alive_timeout=30.0,
        # Shutdown (docs/operations.md): SIGTERM is a warm shutdown, running tasks finish and
        # reserved ones go back to the queue. A lost broker connection cancels running tasks:
        # their acks could not be sent anyway, so they are redelivered rather than run twice.
        # On a cold shutdown (SIGQUIT) tasks get this long before they are cancelled/requeued.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=10.0,
    )
    return app


# What `celery -A celery_config worker|beat` runs, configured from the environment.
celery_app = make_celery(os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL"))


@signals.task_prerun.connect
def _bind_log_context(task_id: str = "", task: Any = None, **_: Any) -> None:
    """Every log line of a task carries its id and the request id of the web call behind it."""
    from core import logs

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
    from core import metrics
    from core.backlog import SENT_AT_HEADER

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
        from datetime import datetime

        with contextlib.suppress(ValueError):
            since = max(since, datetime.fromisoformat(eta).timestamp())
    queue = (getattr(request, "delivery_info", None) or {}).get("routing_key") or "unknown"
    metrics.task_waited(queue, time.time() - since)


@signals.before_task_publish.connect
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every message says when it was sent: queue lag for /metrics and the stage timings."""
    from core.backlog import SENT_AT_HEADER

    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


@signals.task_postrun.connect
def _log_stage_timing(
    task_id: str = "", task: Any = None, state: str | None = None, **_: Any
) -> None:
    """One line per task execution: the stage, how long it took, how it ended."""
    import logging

    started = _started.pop(task_id, None)
    if started is None or task is None:
        return
    duration = round((time.perf_counter() - started) * 1000, 2)
    logging.getLogger("tasks.timing").info(
        "stage %s %s in %.1f ms",
        task.name,
        (state or "done").lower(),
        duration,
        extra={"task": task.name, "duration_ms": duration, "outcome": state or "done"},
    )
    from core import metrics

    metrics.task_finished(task.name, state or "done", duration / 1000)


_started: dict[str, float] = {}


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
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _metrics_process_dead(**_: Any) -> None:
    """This process's live gauges leave /metrics with it; its counters stay in the totals."""
    from core import metrics

    metrics.mark_dead(os.getpid())
