"""Worker operations (#10): the shutdown settings of the worker and the web, what work waiting
for a worker looks like (queue depth and lag, the outbox backlog, `status` exiting 1), a SIGTERM
to a worker mid-batch followed by a restart delivering every message once and in order, and,
with a worker running, its stage samples reaching the web's /metrics and `status` reporting
queues, outbox, workers and reachability. The worker is a real Celery subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest

from domain.moderation_stage import BATCH
from tests.conftest import ROOT, Stack, wait_for
from tests.factories import (
    ONE_DATABASE,
    Api,
    Samples,
    delivered_ids,
    scrape,
    uid,
    value,
    wait_delivered,
)


@ONE_DATABASE
def test_worker_and_web_shutdown_settings(stack: Stack) -> None:
    conf = stack.svc.tasks.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.worker_prefetch_multiplier == 1
    procfile = (ROOT / "Procfile").read_text()
    assert "--graceful-timeout" in procfile
    import runpy

    gconf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert "%(U)s" in gconf["access_log_format"] and "%(r)s" not in gconf["access_log_format"]
    assert callable(gconf["child_exit"])


def test_queue_depth_lag_and_outbox_backlog_show_work_waiting_for_a_worker(
    api: Api, idle: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    for i in range(3):
        api.send(a, cid, f"waiting {i}")
    time.sleep(0.3)
    got = scrape(api)
    # one to three tasks: posts committed while a publish is in flight share the next one
    # (domain/ingest_publisher.py); each message has its own outbox row either way
    assert value(got, "parley_queue_depth", queue="pipeline") >= 1
    assert value(got, "parley_queue_lag_seconds", queue="pipeline") >= 0.3
    assert value(got, "parley_outbox_backlog") >= 3
    assert value(got, "parley_outbox_oldest_age_seconds") >= 0.3
    assert value(got, "parley_broker_up") == 1
    assert ("parley_queue_depth", frozenset({("queue", "media")})) in got


def test_status_exits_1_when_no_worker_answers(idle: Stack) -> None:
    result = idle.app.test_cli_runner().invoke(args=["status"])
    assert result.exit_code == 1
    assert "none answered" in result.output and "DEGRADED" in result.output


@pytest.mark.parametrize(
    "pool",
    [["--concurrency", "2"], ["--pool", "solo"]],  # the Procfile's; docs/deploy.md's option
    ids=["prefork", "solo"],
)
def test_sigterm_to_a_worker_mid_batch_then_a_restart_delivers_every_message_once(
    api: Api, idle: Stack, pool: list[str]
) -> None:
    """SIGTERM the worker's process group (as honcho and systemd do) while it works through a
    batch: the warm shutdown finishes or requeues what it holds, and after a restart every
    message reaches every member exactly once, in order. With the prefork pool (children run
    the tasks) and with a solo worker (the process itself runs them)."""
    a, b = uid(), uid()
    cids = [api.conversation(a, b) for _ in range(4)]  # message i goes to cids[i % 4]
    ids: list[str] = []
    # Several of the moderation stage's batches (a batch takes what waits, up to BATCH,
    # across conversations, and its fan-out appears in the streams at once).
    for i in range(4 * BATCH):
        ids.append(api.send(a, cids[i % 4], f"batch {i}")["id"])
    log = idle.data_dir / f"sigterm-{uuid.uuid4().hex[:6]}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO",
             "-Q", "pipeline,media,push,maintenance", *pool,
             "--hostname", f"sigterm-{uuid.uuid4().hex[:6]}@%h",
             "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=idle.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: len(delivered_ids(idle, b)) >= 3, 60, 0.02, "the batch to start")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        assert "WorkerLostError" not in log.read_text(), "a pool child died mid-task"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    at_stop = len(delivered_ids(idle, b))
    assert at_stop < len(ids), "the batch finished before the SIGTERM: nothing was tested"
    idle.worker.start(idle.app)
    for user in (a, b):
        wait_delivered(idle, user, ids, timeout=120)
    for user in (a, b):
        got = delivered_ids(idle, user)
        assert Counter(got) == Counter(ids), f"{user}: duplicates or losses"
        for k in range(4):
            posted = ids[k::4]  # one conversation's messages, in seq order
            wanted = set(posted)
            assert [m for m in got if m in wanted] == posted, f"{user}: out of seq order"


def test_pipeline_stages_moderation_and_queue_wait_reach_metrics_from_the_worker(
    api: Api, live: Stack
) -> None:
    """Samples written by the Celery worker's processes appear in the web's /metrics."""
    a, b = uid(), uid()
    cid = api.conversation(a, b, ctype="direct")
    before = scrape(api)
    # One after the other: posts committed while a publish is in flight share one task
    # (domain/ingest_publisher.py), and this test counts two tasks.
    for text in ("call me at five five five one two three four", "plain hello"):
        wait_delivered(live, b, [api.send(a, cid, text)["id"]])
    stage = "tasks.moderate.moderate_messages"  # a post's batch task (domain/ingest.py)

    def counted() -> Samples | None:
        now = scrape(api)
        done = value(now, "parley_tasks_total", task=stage, outcome="success")
        earlier = value(before, "parley_tasks_total", task=stage, outcome="success")
        return now if done - earlier >= 2 else None  # successes only: earlier tests may retry

    after = wait_for(counted, 15, 0.1, "the worker's task counters")
    assert value(after, "parley_task_duration_seconds_count", task=stage) >= 2
    assert value(after, "parley_task_queue_wait_seconds_count", queue="pipeline") >= 2
    verdicts = "parley_moderation_verdicts_total"
    assert value(after, verdicts, action="mask", label="phone") > value(
        before, verdicts, action="mask", label="phone"
    )
    assert value(after, verdicts, action="allow", label="none") > value(
        before, verdicts, action="allow", label="none"
    )


def test_status_shows_queues_outbox_workers_and_reachability(live: Stack) -> None:
    runner = live.app.test_cli_runner()
    result = runner.invoke(args=["status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["database"] == "ok" and report["redis"] == "ok" and report["ok"] is True
    assert set(report["broker"]["queues"]) == {"pipeline", "media", "push", "maintenance"}
    assert all(q["depth"] is not None for q in report["broker"]["queues"].values())
    assert report["outbox"]["backlog"] is not None
    assert any(name.startswith("test-") for name in report["workers"]["answered"])
    assert "dead_letters" in report
    text = runner.invoke(args=["status"])
    assert text.exit_code == 0
    for word in ("database", "redis", "pipeline", "outbox", "workers", "dead letters"):
        assert word in text.output
    assert "status        ok" in text.output
