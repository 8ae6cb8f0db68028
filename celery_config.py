"""Celery's settings for Parley, built from `core.config.Settings`: broker, queues, routes,
reliability and the beat schedule.

Every Celery app of a process gets them through `core.celery_app.make_celery`: the web's
producer and the worker's app (worker.py: `celery -A worker worker|beat`). Ops scale a stage by
starting workers with `-Q <queue>`; routes live here and nowhere else. Nothing here reads the
environment: Settings has already (and `.env`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu import Queue

from core.config import Settings

QUEUES = ("pipeline", "media", "push", "maintenance")
# The modules a worker imports to find its tasks (names only: the web never imports them).
TASK_MODULES = (
    "tasks.moderate",
    "tasks.fanout",
    "tasks.index",
    "tasks.media",
    "tasks.push",
    "tasks.outbox",
    "tasks.rotation",
    "tasks.retention",
)
# One module and one queue per stage: task names follow module paths.
ROUTES = {
    "tasks.moderate.*": {"queue": "pipeline"},
    "tasks.fanout.*": {"queue": "pipeline"},
    "tasks.index.*": {"queue": "pipeline"},
    "tasks.media.*": {"queue": "media"},
    "tasks.push.*": {"queue": "push"},
    "tasks.outbox.*": {"queue": "maintenance"},
    "tasks.rotation.*": {"queue": "maintenance"},
    "tasks.retention.*": {"queue": "maintenance"},
}
# kombu's Redis transport with one client per channel (core/redis_transport.py), for redis://
REDIS_TRANSPORT = "core.redis_transport:Transport"
# Longer than any countdown/ETA we use, so the Redis broker never hands a waiting task to a
# second worker (kombu restores unacked messages after this many seconds).
VISIBILITY_TIMEOUT_S = 3600


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery's lowercase settings for this deployment."""
    return {
        "broker_url": settings.broker_url,
        # Celery lets CELERY_BROKER_URL in os.environ win over broker_url; these two it does
        # not, so Settings decide (two apps in one process keep their own brokers).
        "broker_read_url": settings.broker_url,
        "broker_write_url": settings.broker_url,
        "broker_transport": REDIS_TRANSPORT
        if urlsplit(settings.broker_url).scheme == "redis"
        else None,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "include": list(TASK_MODULES),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        # At least once, made exactly once in effect by idempotent stages (docs/architecture.md).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": 60,
        "task_time_limit": 90,
        "task_default_queue": "pipeline",
        "task_queues": [Queue(name) for name in QUEUES],
        "task_routes": ROUTES,
        "beat_schedule": beat_schedule(settings),
        # Task events (docs/operations.md): off unless PARLEY_TASK_EVENTS, since each costs
        # a broker publish (four per task); Flower switches the workers' events on itself.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_hijack_root_logger": False,
        # Each pool child builds the Flask app at start (worker.py, ~1 s, more on a loaded box):
        # give it longer than Celery's 4 s before the child counts as failed to start.
        "worker_proc_alive_timeout": 30.0,
        # Shutdown (docs/operations.md): SIGTERM is a warm shutdown, running tasks finish and
        # reserved ones go back to the queue. A lost broker connection cancels running tasks:
        # their acks could not be sent anyway, so they are redelivered rather than run twice.
        # On a cold shutdown (SIGQUIT) tasks get this long before they are cancelled/requeued.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": 10.0,
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """What celery beat sends, and how often; a run not started in time expires unsent."""
    return {
        "outbox-sweep": _every(settings.outbox_sweep_s, "tasks.outbox.sweep", expires=2),
        # lost push countdowns, crashed leases, expiry (tasks/push.py)
        "push-sweep": _every(settings.push_sweep_s, "tasks.push.sweep", expires=2),
        # hide expired messages, delete past the grace period
        "retention-purge": _every(settings.retention_interval_s, "tasks.retention.purge"),
    }


def _every(period_s: float, task: str, expires: float = 1) -> dict[str, Any]:
    """`task` every `period_s` seconds, expiring after `expires` periods."""
    return {"task": task, "schedule": period_s, "options": {"expires": period_s * expires}}
