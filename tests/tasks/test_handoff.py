"""Posts that ride on a moderate task already on its way (domain/ingest_handoff.py), end to end
with a real worker: delivered once and in order, their request ids on the worker's stage lines,
and posts riding on a task that never comes held back only until the list is STALE_S old."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import redis

from domain import ingest_handoff
from domain.messages import MODERATE_BATCH_TASK
from tests.conftest import Stack, wait_for
from tests.factories import Api, delivered_ids, uid, wait_delivered

QUEUE = "pipeline"


def _named_by_tasks(broker: redis.Redis, ids: list[str]) -> list[list[str]]:
    """For each moderate-batch task on the broker naming any of `ids`: the ones it names."""
    named = []
    for raw in broker.lrange(QUEUE, 0, -1):
        envelope = json.loads(raw)
        if envelope["headers"].get("task") != MODERATE_BATCH_TASK:
            continue
        mids = [mid for mid, _ in json.loads(base64.b64decode(envelope["body"]))[0][0]]
        if set(mids) & set(ids):
            named.append([m for m in mids if m in ids])
    return named


def test_posts_riding_on_a_task_on_its_way_are_delivered_once_in_order_and_traced(
    api: Api, idle: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six posts one after the other with no worker running: they are all handed over, and one
    task on the broker names the first of them (the others ride on it). Once a worker runs,
    every post reaches the recipient once, in order, and the stage lines name each request."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    trace = uid("ride")
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    idle.redis.delete(ingest_handoff.KEY)  # see test_ingest_publisher: nothing is lost by it
    monkeypatch.setattr(ingest_handoff, "STALE_S", 60)  # no more tasks before the worker's start
    ids = []
    for n in range(6):
        resp = api.post(
            f"/v1/conversations/{cid}/messages",
            user=a,
            json={"text": f"riding {n}"},
            headers={"X-Request-ID": f"{trace}-{n}"},
        )
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["id"])

    def all_handed() -> list[str] | None:
        raw = idle.redis.lrange(ingest_handoff.KEY, 0, -1)
        handed = [m for m in (json.loads(r)[0] for r in raw) if m in ids]
        return handed if handed == ids else None

    wait_for(all_handed, 10, 0.05, "every post on the hand-over list, in order")
    # One task names the first flush's posts, unless a late flush of an earlier test made the
    # list first; either way the others rode.
    tasks = _named_by_tasks(broker, ids)
    assert len(tasks) <= 1, tasks
    named = tasks[0] if tasks else []
    assert named == ids[: len(named)], "the task names the first flush's posts"
    assert len(named) < len(ids), "no post rode on the first task: the test shows nothing"
    idle.worker.start(idle.app)
    for user in (a, b):
        wait_delivered(idle, user, ids)
        assert [m for m in delivered_ids(idle, user) if m in ids] == ids, user

    def traced() -> set[str] | None:
        lines = [
            line
            for line in idle.worker.log().splitlines()
            if "stage tasks.moderate.moderate_messages " in line and trace in line
        ]
        named = set(re.findall(rf"{trace}-\d", "\n".join(lines)))
        return named if len(named) == len(ids) else None

    wait_for(traced, 15, 0.1, "the stage lines naming every request")
    assert not [r for r in idle.redis.lrange(ingest_handoff.KEY, 0, -1) if trace in r.decode()]


def test_posts_riding_on_a_task_that_never_comes_get_one_after_stale_s(
    api: Api, idle: Stack
) -> None:
    """A hand-over list whose task never came (a web process killed between its push and its
    publish): a post finds the list not empty and sends no task. Once nobody has taken from
    the list for STALE_S, the next post sends one, which takes the list: both posts (and the
    lost task's entry) are delivered once, in order, without the outbox sweeper (which does
    not run here)."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    idle.redis.delete(ingest_handoff.KEY)
    made = time.monotonic()
    assert ingest_handoff.hand_over(idle.redis, [(uid("lost"), cid, "")])  # its task never came
    first = api.send(a, cid, "behind a task that never came")["id"]
    wait_for(lambda: idle.redis.llen(ingest_handoff.KEY) == 2, 10, 0.05, "the ride")
    assert time.monotonic() - made < ingest_handoff.STALE_S, "too slow to show the ride"
    assert _named_by_tasks(broker, [first]) == [], "a task was sent: the test shows nothing"
    time.sleep(max(0.0, made + ingest_handoff.STALE_S + 0.1 - time.monotonic()))
    second = api.send(a, cid, "after the list went stale")["id"]
    wait_for(lambda: _named_by_tasks(broker, [second]) == [[second]], 10, 0.05, "its task")
    assert _named_by_tasks(broker, [first]) == []
    idle.worker.start(idle.app)
    wait_delivered(idle, b, [first, second], timeout=30)
    assert [m for m in delivered_ids(idle, b) if m in (first, second)] == [first, second]
