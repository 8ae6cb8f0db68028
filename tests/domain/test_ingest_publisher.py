"""The ingest publisher (domain/ingest_publisher.py): committed posts' moderate tasks reach the
real broker from its sender thread, each message named once, in tasks of at most MAX_PER_TASK,
with the requests' ids; `flush()` sends in the caller's thread (what exit relies on)."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import redis

from domain import ingest_publisher
from domain.ingest_publisher import Publisher
from domain.messages import MODERATE_BATCH_TASK
from tests.conftest import Stack, wait_for
from tests.factories import uid

QUEUE = "pipeline"  # celery_config.ROUTES: tasks.moderate.* → the pipeline queue


def _tasks(broker: redis.Redis, marker: str) -> list[tuple[bytes, dict[str, Any], list[Any]]]:
    """The moderate-batch tasks on the broker's pipeline queue whose messages carry `marker`:
    (raw entry, headers, args)."""
    found = []
    for raw in broker.lrange(QUEUE, 0, -1):
        envelope = json.loads(raw)
        headers = envelope["headers"]
        if headers.get("task") != MODERATE_BATCH_TASK:
            continue
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        if any(marker in mid for mid, _ in args[0]):
            found.append((raw, headers, args))
    return found


def test_published_batches_reach_the_broker_each_message_once_in_bounded_tasks(
    idle: Stack,
) -> None:
    """Forty batches published from eight threads at once, 700 messages in all: every message
    is named by exactly one task on the broker, no task names more than MAX_PER_TASK, fewer
    tasks than batches went out (batches that queue behind a publish leave together), and the
    request ids ride along."""
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    marker = uid("pub")
    publisher = Publisher(idle.svc)
    sizes = [5, 30, 1, 64] * 10  # 40 batches, 990 messages
    start = threading.Barrier(8)

    def publish(k: int) -> None:
        start.wait()
        for b in range(k, len(sizes), 8):
            publisher.publish(
                [
                    (f"{marker}-{b}-{n}", f"conv-{b % 3}", f"{marker}-rid-{b}")
                    for n in range(sizes[b])
                ]
            )

    threads = [threading.Thread(target=publish, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    total = sum(sizes)
    try:

        def all_sent() -> list[Any] | None:
            got = _tasks(broker, marker)
            return got if sum(len(args[0]) for _, _, args in got) >= total else None

        got = wait_for(all_sent, 20, what="every published message on the broker")
        named = [mid for _, _, args in got for mid, _ in args[0]]
        assert len(named) == total and len(set(named)) == total
        assert max(len(args[0]) for _, _, args in got) <= ingest_publisher.MAX_PER_TASK
        assert len(got) < len(sizes)
        rids = ",".join(headers["request_id"] for _, headers, _ in got)
        assert all(f"{marker}-rid-{b}" in rids for b in range(len(sizes)))
    finally:
        for raw, _, _ in _tasks(broker, marker):
            broker.lrem(QUEUE, 0, raw)


def test_flush_sends_what_is_queued_in_the_callers_thread(idle: Stack) -> None:
    """What exit (atexit) relies on: `flush()` sends the queue at once and empties it."""
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    marker = uid("flush")
    publisher = Publisher(idle.svc)
    try:
        assert publisher.flush() == 0
        publisher.queue([(f"{marker}-{n}", "c", f"r{n // 150}") for n in range(300)])
        assert publisher.flush() == 300
        got = _tasks(broker, marker)
        assert sorted(len(args[0]) for _, _, args in got) == [44, 256]
        # each task names its own messages' request ids only
        by_size = {len(args[0]): headers["request_id"] for _, headers, args in got}
        assert by_size == {256: "r0,r1", 44: "r1"}
        assert publisher.flush() == 0
    finally:
        for raw, _, _ in _tasks(broker, marker):
            broker.lrem(QUEUE, 0, raw)
