"""Posts that ride on a moderate task already on its way (domain/ingest_handoff.py), end to end
with a real worker: delivered once and in order, their request ids on the worker's stage lines,
and a hand-over list whose task was lost held back only until the outbox sweeper."""

from __future__ import annotations

import base64
import json
import re
import time

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
    api: Api, idle: Stack
) -> None:
    """Six posts one after the other with no worker running: they are all handed over, and one
    task on the broker names the first of them (the others ride on it). Once a worker runs,
    every post reaches the recipient once, in order, and the stage lines name each request."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    trace = uid("ride")
    broker = redis.Redis.from_url(idle.svc.settings.broker_url)
    idle.redis.delete(ingest_handoff.KEY)  # see test_ingest_publisher: nothing is lost by it
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


def test_a_post_riding_on_a_lost_task_is_delivered_once_the_sweeper_runs(
    api: Api, live: Stack
) -> None:
    """A hand-over list whose task never reached the broker: a post finds it not empty and
    sends no task, so nothing moderates it; the outbox sweeper's task for it takes the list
    (the lost task's entry with it) and the post is delivered once."""
    from tasks.outbox import sweep

    a, b = uid(), uid()
    cid = api.conversation(a, b)
    live.redis.delete(ingest_handoff.KEY)
    assert ingest_handoff.hand_over(live.redis, [(uid("lost"), cid, "")])  # its task is lost
    mid = api.send(a, cid, "behind a lost task")["id"]
    wait_for(lambda: len(live.redis.lrange(ingest_handoff.KEY, 0, -1)) == 2, 10, 0.05, "the ride")
    time.sleep(1.0)  # the worker is idle: no task was sent
    assert mid not in delivered_ids(live, b)

    def swept() -> bool:
        with live.app.app_context():
            sweep()  # re-sends once the outbox row is stale (2 s here)
        return mid in delivered_ids(live, b)

    wait_for(swept, 30, 0.5, "the sweeper's task to take the list and deliver the post")
    wait_delivered(live, b, [mid])
    assert delivered_ids(live, b).count(mid) == 1
    assert live.redis.llen(ingest_handoff.KEY) == 0
