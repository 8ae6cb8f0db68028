"""Posts that ride on a moderate task already on its way (domain/ingest_handoff.py), end to end
with a real worker: delivered once and in order, their request ids on the worker's stage lines,
and posts riding on a task that never comes held back only until the list expires."""

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
    monkeypatch.setattr(ingest_handoff, "TTL_S", 60)  # the list outlives the worker's start
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
        handed = [json.loads(r)[0] for r in raw]
        return handed if handed == ids else None

    wait_for(all_handed, 10, 0.05, "every post on the hand-over list, in order")
    tasks = _named_by_tasks(broker, ids)
    assert len(tasks) == 1, tasks
    assert tasks[0] == ids[: len(tasks[0])], "the task names the first flush's posts"
    assert len(tasks[0]) < len(ids), "no post rode on the first task: the test shows nothing"
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


def test_posts_riding_on_a_task_that_never_comes_wait_only_until_the_list_expires(
    api: Api, live: Stack
) -> None:
    """A hand-over list whose task never came (a web process killed between its push and its
    publish): a post finds the list not empty, sends no task and is not moderated. The list
    expires TTL_S after it was made; the next post then sends a task, whose read of what
    waits takes the stranded post too: both are delivered once, in order, without the
    outbox sweeper (which does not run here)."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    live.redis.delete(ingest_handoff.KEY)
    made = time.monotonic()
    assert ingest_handoff.hand_over(live.redis, [(uid("lost"), cid, "")])  # its task never came
    first = api.send(a, cid, "behind a task that never came")["id"]
    wait_for(lambda: live.redis.llen(ingest_handoff.KEY) == 2, 10, 0.05, "the ride")
    time.sleep(max(0.0, made + ingest_handoff.TTL_S / 2 - time.monotonic()))
    assert first not in delivered_ids(live, b), "a task was sent: the test shows nothing"
    wait_for(
        lambda: not live.redis.exists(ingest_handoff.KEY), ingest_handoff.TTL_S + 5, 0.05,
        "the list to expire",
    )  # fmt: skip
    second = api.send(a, cid, "after the list expired")["id"]
    wait_delivered(live, b, [first, second], timeout=15)
    assert [m for m in delivered_ids(live, b) if m in (first, second)] == [first, second]
