"""The moderate tasks of committed posts, sent to the broker off the request's path.

A Celery publish costs as much wall time as the group commit's whole SQLite transaction
(measured: 22% of a lone sender's web samples each), and a POST needs none of it to be answered:
its message and outbox row are committed, and the outbox sweeper re-sends any message whose
task never reached the broker. So the leader of a batch hands its messages here and answers at
once; one sender thread (a greenlet under gunicorn's gevent worker) sends what has gathered as
one `moderate_messages` task per MAX_PER_TASK messages. While a publish is in flight, the next
batches gather behind it and leave together: under load, fewer and larger tasks.

Why not have the leader send inline when no send is in flight (measured, bench.timeline and
bench.peer, alternating runs): a lone message is then delivered 1.2-2.3 ms sooner, p50 (here
the request's own after-work, its access line and its response, runs before the sender
thread), but the peer scenarios lose 15-40% of their msgs/s at 20-60% more CPU per message,
because fewer publishes are coalesced.

Posts that commit while a task is on its way ride on it (domain/ingest_handoff.py): only a
flush that finds nothing handed over, or a list nobody has taken from for STALE_S, sends a
task.

Order does not depend on the tasks: the moderation stage walks each conversation in seq order
from the database. At exit, what is still queued is sent before the process goes (atexit); a
process killed outright leaves it to the sweeper.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Sequence

import redis

from core.services import Services
from domain import ingest_handoff, outbox
from domain.messages import MODERATE_BATCH_TASK

logger = logging.getLogger(__name__)

MAX_PER_TASK = 256  # messages named by one task: the stage takes at most its own batch anyway


class Publisher:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queued: list[tuple[str, str, str]] = []  # (message id, conversation id, request id)
        self._sender: threading.Thread | None = None
        self._pid = 0
        atexit.register(self.flush)

    def publish(self, messages: Sequence[tuple[str, str, str]]) -> None:
        """Queue (message id, conversation id, request id or "") and wake the sender thread;
        returns at once."""
        self.queue(messages)
        with self._lock:
            if self._sender is None or self._pid != os.getpid():  # first use, or a fork's child
                self._pid = os.getpid()
                self._sender = threading.Thread(
                    target=self._run, name="parley-ingest-publisher", daemon=True
                )
                self._sender.start()
        self._wake.set()

    def queue(self, messages: Sequence[tuple[str, str, str]]) -> None:
        """Queue without waking the sender: the next send, or `flush()`, takes them."""
        with self._lock:
            self._queued.extend(messages)

    def flush(self) -> int:
        """Hand over what is queued now and, unless a task is on its way to take it, send
        the tasks that name it, in this thread; returns how many messages it handed over.
        Each task carries its own messages' request ids, comma-separated, for the stage's
        logs (a task that takes more adds theirs)."""
        with self._lock:
            queued, self._queued = self._queued, []
        if not queued:
            return 0
        try:
            if not ingest_handoff.hand_over(self.svc.redis, queued):
                return len(queued)
        except redis.RedisError as exc:  # no list to ride on: each flush sends its own task
            logger.warning("ingest publisher: hand-over failed, sending the task: %s", exc)
        tasks = []
        for k in range(0, len(queued), MAX_PER_TASK):
            chunk = queued[k : k + MAX_PER_TASK]
            rids = ",".join(dict.fromkeys(rid for _, _, rid in chunk if rid)) or None
            tasks.append((MODERATE_BATCH_TASK, [[[mid, cid] for mid, cid, _ in chunk]], rids))
        if not outbox.send_many(self.svc.tasks, tasks):
            # No task is on its way: posts must not ride on the list until the sweeper's
            # tasks take it, so the next post after the broker is back sends its own.
            with contextlib.suppress(redis.RedisError):
                ingest_handoff.forget(self.svc.redis)
        return len(queued)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # send_many logs the broker's failures; anything else here
                logger.exception("ingest publisher: send failed, left to the outbox sweeper")
