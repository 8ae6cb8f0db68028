"""Transactional outbox: rows written with the change, tasks sent only after the commit.

`add()` records the work in the caller's transaction; a session `after_commit` hook sends it to
the broker. If the send fails (broker down), nothing is lost: the sweeper (tasks/outbox.py)
re-sends rows not done in time, backing off per attempt so a backlog is not multiplied.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, bindparam, event, update
from sqlalchemy.orm import Session, sessionmaker

from core import logs
from core.ids import utcnow
from models import Outbox

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

_PENDING = "parley_outbox_pending"


def add(session: Session, task: str, args: Sequence[Any], ref_id: str | None = None) -> Outbox:
    row = Outbox(task=task, args=list(args), ref_id=ref_id)
    session.add(row)
    session.info.setdefault(_PENDING, []).append(row)
    return row


_outbox = cast(Table, Outbox.__table__)
# Core, built once: on the hot paths (the fan-out, the index stage) the ORM's bulk-update
# bookkeeping and the statement's compilation cost more than the UPDATE itself.
_DONE = (
    update(_outbox)
    .where(
        _outbox.c.ref_id.in_(bindparam("ids", expanding=True)),
        _outbox.c.done_at.is_(None),
        _outbox.c.task == bindparam("of_task"),  # "task" is the column's own name
    )
    .values(done_at=bindparam("at"))
)


def mark_done(db: Session | Connection, ref_ids: Sequence[str], task: str) -> None:
    """Mark the `task` rows of these refs done, in the caller's transaction."""
    if ref_ids:
        db.execute(_DONE, {"ids": list(ref_ids), "of_task": task, "at": utcnow()})


RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2}
# How much of a task's arguments its message shows to monitoring (Flower, task events). Given
# here, Celery skips its own `saferepr`, a pure-Python walk of the arguments that cost ~3% of a
# web process's CPU under load (a batch task carries up to 64 [message, conversation] pairs);
# our arguments are plain JSON (ids, numbers, small event data), for which the built-in
# `repr` shows what `saferepr` would, cut at the same size.
ARGS_SHOWN = 1024


def send(producer: Celery, task: str, args: Sequence[Any]) -> bool:
    """Send one task through this process's producer; False (logged) when the broker is
    unreachable."""
    return send_many(producer, [(task, args, logs.current("request_id"))]) == 1


def send_many(producer: Celery, tasks: Sequence[tuple[str, Sequence[Any], str | None]]) -> int:
    """Send (task, args, request id) back to back over one producer: one connection checkout
    and, on Redis, one pipeline for the lot (kombu's `Producer.batch`; other transports publish
    each at once). Returns how many were sent: all, or none when the broker is unreachable (a
    batch that fails may have delivered part of it; tasks are idempotent, so the sweeper's
    re-send of the rest, or of all, is harmless)."""
    if not tasks:
        return 0
    try:
        with producer.producer_or_acquire() as prod, prod.batch():
            for task, args, rid in tasks:
                producer.send_task(
                    task,
                    args=list(args),
                    argsrepr=repr(list(args))[:ARGS_SHOWN],
                    kwargsrepr="{}",
                    headers={"request_id": rid} if rid else None,
                    producer=prod,
                    retry=True,
                    retry_policy=RETRY_POLICY,
                )
    except Exception as exc:  # broker down: the sweeper will re-send
        task, args, _ = tasks[0]
        logger.warning(
            "enqueue of %d task(s) (%s%s…) failed, left to the sweeper: %s",
            len(tasks),
            task,
            list(args),
            exc,
        )
        return 0
    return len(tasks)


def install(session_factory: sessionmaker[Session], producer: Celery) -> None:
    """Send queued outbox rows through `producer` after each successful commit of sessions
    from this factory."""

    @event.listens_for(session_factory, "after_commit")
    def _after_commit(session: Session) -> None:
        rows = session.info.pop(_PENDING, [])
        if rows:
            rid = logs.current("request_id")
            send_many(producer, [(row.task, row.args, rid) for row in rows])

    @event.listens_for(session_factory, "after_rollback")
    def _after_rollback(session: Session) -> None:
        session.info.pop(_PENDING, None)
