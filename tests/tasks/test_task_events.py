"""Celery task events are on (celery_config.py), so Flower and `celery events` see every task
without switching events on remotely: the producer sends `task-sent`, a real worker
`task-received`, `task-started` and `task-succeeded`."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.conftest import Stack, wait_for
from tests.factories import Api, uid

STAGE = "tasks.moderate.moderate_messages"  # the task of a post's group-commit batch


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)  # events do not touch the database
def test_a_posted_messages_pipeline_task_is_seen_sent_received_started_and_succeeded(
    api: Api, live: Stack
) -> None:
    """Listen on the broker's event exchange as Flower does, then post a message."""
    app = live.svc.tasks
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        listening = threading.Thread(target=receiver.capture, kwargs={"wakeup": False})
        listening.start()
        try:
            # The subscription starts inside the thread: send our own event until it comes
            # back, so nothing the pipeline emits later can be missed.
            probe = uid("probe")
            with app.events.default_dispatcher() as dispatcher:

                def probe_came_back() -> bool:
                    dispatcher.send("parley-probe", probe=probe)
                    return any(e.get("probe") == probe for e in list(seen))

                wait_for(probe_came_back, 15, 0.2, what="the event receiver to listen")
            a, b = uid(), uid()
            mid = api.send(a, api.conversation(a, b), "events please")["id"]
            sent = wait_for(
                lambda: next(
                    (
                        e
                        for e in list(seen)
                        if e["type"] == "task-sent" and e["name"] == STAGE and mid in e["args"]
                    ),
                    None,
                ),
                30,
                what="task-sent for the message's moderation task",
            )

            def worker_events() -> list[str]:
                types = [e["type"] for e in list(seen) if e.get("uuid") == sent["uuid"]]
                return types if "task-succeeded" in types else []

            types = wait_for(worker_events, 30, what="the worker's events for that task")
        finally:
            receiver.should_stop = True
            listening.join(10)
    assert not listening.is_alive()
    assert sent["queue"] == "pipeline"
    received = next(e for e in seen if e["type"] == "task-received" and e["uuid"] == sent["uuid"])
    assert received["name"] == STAGE and received["hostname"].startswith("test-")
    assert (
        types.index("task-received") < types.index("task-started") < types.index("task-succeeded")
    )
