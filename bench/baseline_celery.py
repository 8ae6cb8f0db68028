"""The bare baselines for bench/pipeline.py: a Celery chain of three no-op tasks, and a task
that only says when it started (send → task-start latency).

Shaped like Parley's pipeline: stage 1 (moderate) → stage 2 (fan-out, where the message counts
as delivered: it signals) → stage 3 (push intent, off the delivery path).

Same broker, serializer, acks_late and prefetch settings as Parley's app, so the ratio isolates
what Parley's stages cost (DB, crypto, moderation, Redis fan-out), not Celery itself.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("baseline", broker=BROKER)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="baseline",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_redis = redis.Redis.from_url(os.environ.get("REDIS_URL", BROKER))


@app.task(name="baseline.stage1")
def stage1(token: str) -> None:
    stage2.delay(token)


@app.task(name="baseline.stage2")
def stage2(token: str) -> None:
    _redis.xadd("baseline:done", {"token": token})
    stage3.delay(token)


@app.task(name="baseline.stage3")
def stage3(token: str) -> None:
    return None


@app.task(name="baseline.started")
def started(token: str) -> None:
    _redis.xadd("baseline:started", {"token": token})
