"""The ingest publisher (domain/ingest_publisher.py) and the hand-over list it shares with the
moderate tasks (domain/ingest_handoff.py), on the real broker and Redis with no worker running:
every committed post is handed over once, with its request id; only a flush that finds the list
empty sends tasks (of at most MAX_PER_TASK); `flush()` works in the caller's thread (what exit
relies on); a task's take is bounded and sends one more task when it leaves posts behind."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
import redis

from core import logs
from domain import ingest_handoff, ingest_publisher
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


def _handed(r: redis.Redis, marker: str) -> list[list[str]]:
    """The hand-over list's entries whose message id carries `marker`, oldest first."""
    return [
        e
        for e in (json.loads(raw) for raw in r.lrange(ingest_handoff.KEY, 0, -1))
        if marker in e[0]
    ]


def _clean(broker: redis.Redis, r: redis.Redis, marker: str) -> None:
    for raw, _, _ in _tasks(broker, marker):
        broker.lrem(QUEUE, 0, raw)
    for raw in r.lrange(ingest_handoff.KEY, 0, -1):
        if marker in raw.decode():
            r.lrem(ingest_handoff.KEY, 0, raw)


def test_concurrent_batches_are_handed_over_once_and_only_the_first_flush_sends_tasks(
    idle: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty batches published from eight threads at once, 990 messages in all, with no
    worker to take them: every message is on the hand-over list exactly once with its
    request id, and the only tasks on the broker naming them are those of a flush that found
    the list empty (the others ride on them), each naming at most MAX_PER_TASK."""
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    marker = uid("pub")
    publisher = Publisher(idle.svc)
    sizes = [5, 30, 1, 64] * 10
    start = threading.Barrier(8)
    # Posts of earlier tests may still be handed over: their tasks wait on the broker, and
    # their messages for any task's read of what waits.
    idle.redis.delete(ingest_handoff.KEY)
    monkeypatch.setattr(ingest_handoff, "STALE_S", 60)  # no worker takes it: no more tasks

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
        handed = wait_for(
            lambda: (got := _handed(idle.redis, marker)) and len(got) >= total and got,
            20,
            what="every published message handed over",
        )
        assert len(handed) == total and len({mid for mid, _, _ in handed}) == total
        assert {(mid.rsplit("-", 2)[1], rid) for mid, _, rid in handed} == {
            (str(b), f"{marker}-rid-{b}") for b in range(len(sizes))
        }
        got = _tasks(broker, marker)
        named = [mid for _, _, args in got for mid, _ in args[0]]
        # Usually the first flush made the list and sent tasks naming its messages; a late
        # flush of an earlier test's app can make it first (then ours all ride on its task).
        # The next test sends onto an empty list deterministically.
        assert len(named) == len(set(named))
        assert set(named) <= {mid for mid, _, _ in handed}
        assert all(len(args[0]) <= ingest_publisher.MAX_PER_TASK for _, _, args in got)
        assert len(named) < total, "every flush sent tasks: nothing rode on another's"
    finally:
        _clean(broker, idle.redis, marker)


def test_flush_hands_over_in_the_callers_thread_and_sends_only_onto_an_empty_list(
    idle: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What exit (atexit) relies on: `flush()` hands the queue over at once and empties it;
    onto an empty list it sends the tasks that name it, each with its own messages' request
    ids; onto a list not taken yet it sends nothing, unless nobody has taken from the list
    for STALE_S."""
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    marker = uid("flush")
    publisher = Publisher(idle.svc)
    idle.redis.delete(ingest_handoff.KEY)
    monkeypatch.setattr(ingest_handoff, "STALE_S", 60)  # no worker takes it: no more tasks
    try:
        assert publisher.flush() == 0
        publisher.queue([(f"{marker}-{n}", "c", f"r{n // 150}") for n in range(300)])
        assert publisher.flush() == 300
        got = _tasks(broker, marker)
        assert sorted(len(args[0]) for _, _, args in got) == [44, 256]
        by_size = {len(args[0]): headers["request_id"] for _, headers, args in got}
        assert by_size == {256: "r0,r1", 44: "r1"}
        assert publisher.flush() == 0
        publisher.queue([(f"{marker}-late", "c", "r-late")])
        assert publisher.flush() == 1
        assert len(_tasks(broker, marker)) == 2, "a flush onto a list not taken sent a task"
        # nobody has taken from the list for STALE_S: the next flush sends a task too
        monkeypatch.setattr(ingest_handoff, "STALE_S", 0.3)
        time.sleep(0.35)
        publisher.queue([(f"{marker}-stale", "c", "r-stale")])
        assert publisher.flush() == 1
        assert sorted(len(args[0]) for _, _, args in _tasks(broker, marker)) == [1, 44, 256]
        publisher.queue([(f"{marker}-after", "c", "")])
        assert publisher.flush() == 1 and len(_tasks(broker, marker)) == 3
        assert [e[0] for e in _handed(idle.redis, marker)][-4:] == [
            f"{marker}-299",
            f"{marker}-late",
            f"{marker}-stale",
            f"{marker}-after",
        ]
    finally:
        _clean(broker, idle.redis, marker)


def test_a_take_is_bounded_logs_the_riders_request_ids_and_sends_a_task_for_the_rest(
    idle: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 posts handed over: a task's take gets the TAKE_AT_MOST (100) oldest, adds their
    request ids to its log context and sends one more (empty) task for the rest, which the
    next take gets with nothing left behind; then a push finds the list empty again."""
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    marker = uid("take")
    idle.redis.delete(ingest_handoff.KEY)
    monkeypatch.setattr(ingest_handoff, "STALE_S", 60)  # no worker takes it: no more tasks
    most = ingest_handoff.TAKE_AT_MOST
    posts = [(f"{marker}-{n}", f"conv-{n % 2}", f"{marker}-r{n // 50}") for n in range(150)]
    assert most == 100
    before = set(broker.lrange(QUEUE, 0, -1))
    sent: set[bytes] = set()
    try:
        assert ingest_handoff.hand_over(idle.redis, posts)
        assert not ingest_handoff.hand_over(idle.redis, [])
        logs.clear()
        logs.bind(request_id="own")
        first = ingest_handoff.with_handed(idle.svc, [("mine", "conv-9")])
        assert first == [("mine", "conv-9"), *((mid, cid) for mid, cid, _ in posts[:most])]
        assert logs.current("request_id") == f"own,{marker}-r0,{marker}-r1"
        sent = set(broker.lrange(QUEUE, 0, -1)) - before
        assert len(sent) == 1, "one more task for the posts left behind"
        envelope = json.loads(next(iter(sent)))
        assert envelope["headers"]["task"] == MODERATE_BATCH_TASK
        assert json.loads(base64.b64decode(envelope["body"]))[0] == [[]]
        logs.clear()
        second = ingest_handoff.with_handed(idle.svc, [])
        assert second == [(mid, cid) for mid, cid, _ in posts[most:]]
        assert logs.current("request_id") == f"{marker}-r2"
        assert set(broker.lrange(QUEUE, 0, -1)) - before == sent, "nothing was left behind"
        assert ingest_handoff.hand_over(idle.redis, posts[:1]), "the list was not empty"
    finally:
        logs.clear()
        idle.redis.delete(ingest_handoff.KEY)
        for raw in sent:
            broker.lrem(QUEUE, 0, raw)
