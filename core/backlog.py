"""How much work is waiting: broker queue depths and lags, the outbox backlog, dead letters.

Read on demand, never stored: by `/metrics` at scrape time and by `flask --app web status`.
Each reading is cheap (a pipelined LLEN/LINDEX per queue, one indexed query) and one that
fails says so instead of failing the whole report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import func, select

from celery_config import QUEUES
from core.celery_app import SENT_AT_HEADER
from core.ids import utcnow
from core.services import Services
from models import Outbox

# kombu's Redis transport keeps one list per priority step; step 0 is the bare queue name.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


@dataclass
class QueueReading:
    name: str
    depth: int | None = None
    lag_s: float | None = None  # age of the oldest waiting message; 0 when empty
    error: str | None = None


@dataclass
class BrokerReading:
    kind: str
    queues: list[QueueReading] = field(default_factory=list)
    unacked: int | None = None  # reserved by workers, not yet acknowledged (Redis only)
    error: str | None = None


@dataclass
class OutboxReading:
    backlog: int | None = None
    oldest_age_s: float | None = None
    error: str | None = None


def broker(svc: Services, queues: tuple[str, ...] = QUEUES) -> BrokerReading:
    url = svc.settings.broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _redis_broker(url, queues)
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return _amqp_broker(url, queues)
    return BrokerReading(kind=url.split(":", 1)[0], error="queue depth not supported")


def _redis_broker(url: str, queues: tuple[str, ...]) -> BrokerReading:
    reading = BrokerReading(kind="redis")
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        for name in queues:
            for key in _keys(name):
                pipe.llen(key)
            pipe.lindex(name, -1)  # kombu LPUSHes and BRPOPs: the oldest is at the right end
        pipe.hlen("unacked")
        results = pipe.execute()
        per = len(_PRIORITY_STEPS) + 2
        now = time.time()
        for i, name in enumerate(queues):
            chunk = results[i * per : (i + 1) * per]
            depth = sum(int(n) for n in chunk[:-1])
            reading.queues.append(QueueReading(name, depth, _age(chunk[-1], now) if depth else 0.0))
        reading.unacked = int(results[-1])
    except redis.RedisError as exc:
        reading.error = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return reading


def _keys(name: str) -> list[str]:
    return [name, *(f"{name}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)]


def _age(raw: bytes | None, now: float) -> float | None:
    """Seconds since the message was published (or since its ETA, if it had one)."""
    if raw is None:
        return None
    try:
        headers = json.loads(raw).get("headers") or {}
        sent = float(headers[SENT_AT_HEADER])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # published by something that does not stamp messages
    eta = _eta(headers.get("eta"))
    return max(0.0, now - max(sent, eta or 0.0))


def _eta(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _amqp_broker(url: str, queues: tuple[str, ...]) -> BrokerReading:
    """RabbitMQ: a passive declare answers the ready-message count (no lag without peeking)."""
    from kombu import Connection

    reading = BrokerReading(kind="amqp")
    try:
        with Connection(url, connect_timeout=2) as conn:
            channel = conn.channel()
            for name in queues:
                try:
                    ok = channel.queue_declare(queue=name, passive=True)
                    reading.queues.append(QueueReading(name, int(ok.message_count)))
                except Exception as exc:  # a queue not declared yet: no worker ever used it
                    reading.queues.append(QueueReading(name, error=type(exc).__name__))
                    channel = conn.channel()  # a failed passive declare closes the channel
    except Exception as exc:
        reading.error = f"{type(exc).__name__}: {exc}"
    return reading


def outbox(svc: Services) -> OutboxReading:
    """Rows written but not done: the pipeline's true backlog, whatever the broker holds."""
    try:
        with svc.ReadSession() as s:
            count, oldest = s.execute(
                select(func.count(), func.min(Outbox.created_at)).where(Outbox.done_at.is_(None))
            ).one()
    except Exception as exc:
        return OutboxReading(error=f"{type(exc).__name__}: {exc}")
    age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
    return OutboxReading(backlog=int(count), oldest_age_s=max(age, 0.0))


def dead_letters(svc: Services) -> int | None:
    """Push deliveries given up on (kept for ops); None where push has no such table."""
    try:
        from models import PushDelivery
    except ImportError:
        return None
    try:
        with svc.ReadSession() as s:
            return int(s.scalar(select(func.count()).where(PushDelivery.state == "dead")) or 0)
    except Exception:
        return None
