"""The Celery app, built from Settings, and the stamp every message Parley publishes carries.

A web process builds one as its producer (`Services.tasks`: tasks are sent by name, their
modules never imported); the worker entry (worker.py) builds one whose task class runs each task
in the Flask app context. Neither becomes Celery's process-wide current app by being built, so
two apps in one process (the test suite's SQLite and PostgreSQL stacks) never share a broker.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task, signals

from celery_config import celery_settings
from core.config import Settings

# When a message was published: the queue lag of /metrics and the stage timings (worker.py)
# are read from it, and `flask status` reads it from the oldest waiting message (core/backlog).
SENT_AT_HEADER = "parley_sent_at"


def make_celery(settings: Settings, task_cls: type[Task] | None = None) -> Celery:
    """A Celery app with Parley's settings (celery_config.py), bound to `settings.broker_url`."""
    app = Celery("parley", task_cls=task_cls, set_as_current=False)
    app.conf.update(celery_settings(settings))
    return app


@signals.before_task_publish.connect
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every message says when it was sent, whichever app or process published it."""
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()
