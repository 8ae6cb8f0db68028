"""Collapsed in-app notifications (domain/notifications.py) under concurrent push tasks."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from domain import notifications
from models import Message, Notification
from tests.conftest import Stack
from tests.factories import Api, uid


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)  # SQLite has one writer at once
def test_an_older_message_recorded_concurrently_never_replaces_a_newer_one(
    api: Api, idle: Stack
) -> None:
    """Two push tasks of one conversation at once (two worker children): the one recording
    the newer message commits first, the older one's task was already reading. The newest
    message stays the notification's, as it does when they run one after the other. No
    worker runs: its own push task for these messages would record the notification too (a
    CI run lost that race at the first record)."""
    stack = idle
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    first, older, newer = (api.send(a, cid, f"message {i}")["id"] for i in range(3))
    with stack.svc.Session.begin() as s:
        notifications.record(s, s.get(Message, first), [b])
    recorded = threading.Event()

    def record_the_older() -> None:
        with stack.svc.Session.begin() as s:
            recorded.set()
            notifications.record(s, s.get(Message, older), [b])

    with stack.svc.Session.begin() as s:
        notifications.record(s, s.get(Message, newer), [b])  # holds the row until its commit
        late = threading.Thread(target=record_the_older)
        late.start()
        assert recorded.wait(10)
        time.sleep(0.5)  # the older one reads the notification while the newer is uncommitted
    late.join(10)
    assert not late.is_alive()
    with stack.svc.Session() as s:
        note = s.scalars(select(Notification).where(Notification.user_id == b)).one()
        assert note.message_id == newer
