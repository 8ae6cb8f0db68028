"""Backpressure on POST (domain/ingest.Pacer, GroupCommit's `hold`): when the pipeline runs
behind, a committed batch's answers wait, after its publish, and the next batch waits too."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from domain import fanout, moderation_stage
from domain.group_commit import GroupCommit, Item
from domain.ingest import Pacer
from tests.conftest import Stack
from tests.factories import Api, uid


def test_a_held_batch_runs_its_after_step_first_then_answers_late() -> None:
    """With a hold of 0.3 s, the publish step runs at once; the answers come 0.3 s later, and a
    request that arrives meanwhile waits for the hold to end before its own batch starts."""
    events: list[tuple[str, float]] = []
    holds = [0.3, 0.0]

    def write(batch: Sequence[Item[int]]) -> None:
        events.append((f"write {[i.value for i in batch]}", time.monotonic()))
        for item in batch:
            item.answer(item.value)

    def after(batch: Sequence[Item[int]]) -> None:
        events.append((f"after {[i.value for i in batch]}", time.monotonic()))

    gc: GroupCommit[int] = GroupCommit(write, after, hold=lambda: holds.pop(0))
    answered: dict[int, float] = {}

    def submit(n: int) -> None:
        assert gc.submit(n) == n
        answered[n] = time.monotonic()

    started = time.monotonic()
    first = threading.Thread(target=submit, args=(1,))
    first.start()
    time.sleep(0.1)  # the first batch is being held
    second = threading.Thread(target=submit, args=(2,))
    second.start()
    first.join(5)
    second.join(5)
    at = dict(events)
    assert at["after [1]"] - started < 0.2, "the publish waited for the hold"
    assert answered[1] - started >= 0.3, "the answer was not held"
    assert at["write [2]"] - started >= 0.3, "the next batch did not wait for the hold"
    assert "after [2]" in at and answered[2] >= at["write [2]"]


def test_the_pace_follows_the_lag_the_moderation_batch_measured(api: Api, idle: Stack) -> None:
    """A message that waited 0.4 s for the moderation stage (no worker: the stage runs here)
    sets the pipeline's lag; the pacer holds answers for the excess over the target, up to the
    max, and not at all when pacing is off or the pipeline is on time."""
    svc = idle.svc
    a, b = uid(), uid()
    cid = api.conversation(a, b)

    def pacer(lag_target: float, most: float) -> Pacer:
        settings = svc.settings.model_copy(
            update={"ingest_pace_lag_ms": lag_target, "ingest_pace_max_ms": most}
        )
        return Pacer(replace(svc, settings=settings))

    svc.redis.delete(fanout.LAG_KEY)
    assert pacer(100, 250).pause_s() == 0.0  # nothing known: nobody is paced
    assert Pacer(svc).pause_s() == 0.0  # off by default
    mid = api.send(a, cid, "late")["id"]
    time.sleep(0.4)
    moderation_stage.moderate_and_fan_out(svc, {mid: cid})
    lag = fanout.lag_ms(svc)
    assert 400 <= lag < 5000
    try:
        assert abs(pacer(100, 10_000).pause_s() - (lag - 100) / 1000) < 0.05
        assert pacer(100, 150).pause_s() == 0.15
        assert pacer(0, 150).pause_s() == 0.0  # off
        assert pacer(10_000, 150).pause_s() == 0.0  # on time
    finally:
        svc.redis.delete(fanout.LAG_KEY)
