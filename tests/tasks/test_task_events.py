"""Celery task events for Flower and `celery events` (docs/operations.md): off by default (each
is a broker publish, four per task), switched on in the workers by Flower's own
`enable_events` broadcast, and always on, `task-sent` included, with PARLEY_TASK_EVENTS."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery

from core.celery_app import make_celery
from core.config import with_overrides
from tests.conftest import Stack, wait_for
from tests.factories import Api, uid, wait_delivered

STAGE = "tasks.moderate.moderate_messages"  # the task of a post's group-commit batch
SWEEP = "tasks.outbox.sweep"  # harmless to run at any time


@contextmanager
def listening(app: Celery) -> Iterator[list[dict[str, Any]]]:
    """The events on the broker's event exchange, received as Flower receives them."""
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False})
        thread.start()
        try:
            # The subscription starts inside the thread: send our own event until it comes
            # back, so nothing emitted later can be missed.
            probe = uid("probe")
            with app.events.default_dispatcher() as dispatcher:

                def probe_came_back() -> bool:
                    dispatcher.send("parley-probe", probe=probe)
                    return any(e.get("probe") == probe for e in list(seen))

                wait_for(probe_came_back, 15, 0.2, what="the event receiver to listen")
            yield seen
        finally:
            receiver.should_stop = True
            thread.join(10)
    assert not thread.is_alive()


def of_task(seen: list[dict[str, Any]], name: str, arg: str) -> list[dict[str, Any]]:
    """The worker's events for the task `name` whose arguments name `arg`."""
    received = [
        e
        for e in list(seen)
        if e["type"] == "task-received" and e["name"] == name and arg in e["args"]
    ]
    return [e for e in list(seen) if received and e.get("uuid") == received[0]["uuid"]]


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)  # events do not touch the database
def test_no_events_by_default_and_flower_switches_the_workers_on(api: Api, live: Stack) -> None:
    app = live.svc.tasks
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    with listening(app) as seen:
        quiet = api.send(a, cid, "no events please")["id"]
        wait_delivered(live, b, [quiet])
        assert not [e for e in list(seen) if e["type"].startswith("task-")]
        app.control.enable_events()  # what Flower sends its workers when it starts
        try:
            mid = api.send(a, cid, "events please")["id"]
            types = wait_for(
                lambda: (
                    [e["type"] for e in of_task(seen, STAGE, mid)]
                    if any(e["type"] == "task-succeeded" for e in of_task(seen, STAGE, mid))
                    else None
                ),
                30,
                what="the worker's events for the message's task",
            )
        finally:
            app.control.disable_events()
    assert types.index("task-received") < types.index("task-started")
    assert types.index("task-started") < types.index("task-succeeded")
    assert not [e for e in list(seen) if e["type"] == "task-sent"]  # a producer's, below


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_with_task_events_on_the_producer_sends_task_sent(live: Stack) -> None:
    producer = make_celery(with_overrides(live.svc.settings, task_events=True))
    with listening(producer) as seen:
        producer.send_task(SWEEP)
        sent = wait_for(
            lambda: next((e for e in list(seen) if e["type"] == "task-sent"), None),
            30,
            what="task-sent",
        )
    assert sent["name"] == SWEEP and sent["queue"] == "maintenance"
