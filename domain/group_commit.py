"""Group commit: concurrent requests of one process share one transaction (leader/follower).

Each request `submit`s its item and blocks until the item has an outcome. The first request
that finds no batch running becomes the leader: it takes what is queued (up to `max_batch`
items, in arrival order), runs `write(batch)`, which gives every item its outcome (a result or
its own exception) in one transaction, and wakes each item's request. Requests that arrive
meanwhile queue up; when the leader is done, the oldest of them leads the next batch. Under
load, batches form on their own from what arrives while the previous one is written.

The window, under gevent: greenlets are never preempted, so a leader that went straight to its
write would always write alone (measured: every batch held one request). Before it takes the
queue it therefore waits until the event loop is idle (`gevent.idle`), at most `window_s`:
every request whose bytes have arrived meanwhile runs up to its `submit` and joins the batch.
A request alone waits one turn of the loop, not the window. With real threads (sync or
threaded servers, the test client) there is no such wait: requests queue while the leader's
database calls release the GIL.

`after(batch)` runs once the items are answered (the leader's own answer waits for it, no one
else's): the place for a broker publish after the commit. `hold()` (backpressure) gives seconds
to keep a committed batch's answers, and the next batch, waiting: then `after` runs first, so
the hold delays the senders, never the work `after` starts.

Written with `threading` primitives: under gunicorn's gevent worker they are greenlet-aware
(monkey-patched), and with sync or threaded servers they are real locks.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Item(Generic[T]):
    """One request's part of a batch: its input, then its result or its exception."""

    __slots__ = ("_done", "_lead", "error", "result", "value")

    def __init__(self, value: T) -> None:
        self.value = value
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = False
        self._lead = threading.Event()  # set when answered, or when it is to lead

    def answer(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done = True


class GroupCommit(Generic[T]):
    def __init__(
        self,
        write: Callable[[Sequence[Item[T]]], None],
        after: Callable[[Sequence[Item[T]]], None] | None = None,
        *,
        hold: Callable[[], float] | None = None,
        window_s: float = 0.001,
        max_batch: int = 64,
    ) -> None:
        self._write = write
        self._after = after
        self._hold = hold
        self.window_s = window_s
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: deque[Item[T]] = deque()
        self._leading = False
        self._gevent = _gevent_patched()

    def submit(self, value: T) -> Any:
        """Block until `value` has its outcome; return its result or raise its exception."""
        item = Item(value)
        with self._lock:
            self._queue.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            item._lead.wait()
        if not item._done:
            self._lead_batch(item)
        if item.error is not None:
            raise item.error
        return item.result

    def _lead_batch(self, own: Item[T]) -> None:
        batch: list[Item[T]] = []
        after_done = False
        try:
            if self._gevent and self.window_s > 0:
                _let_others_arrive(self.window_s)
            with self._lock:
                while self._queue and len(batch) < self.max_batch:
                    batch.append(self._queue.popleft())
            try:
                self._write(batch)
            except BaseException as exc:  # the whole batch failed: every request learns why
                for item in batch:
                    if not item._done:
                        item.answer(error=exc)
            for item in batch:
                if not item._done:
                    item.answer(error=RuntimeError("group commit left an item unanswered"))
            pause = self._hold() if self._hold is not None and batch else 0.0
            if pause > 0:
                self._run_after(batch)
                after_done = True
                time.sleep(pause)
        finally:
            with self._lock:
                if not batch and own in self._queue:  # killed while waiting: leave no orphan
                    self._queue.remove(own)
                if self._queue:
                    self._queue[0]._lead.set()  # the oldest waiting request leads next
                else:
                    self._leading = False
            for item in batch:
                item._lead.set()
        if not after_done:
            self._run_after(batch)

    def _run_after(self, batch: Sequence[Item[T]]) -> None:
        if self._after is None:
            return
        try:
            self._after([item for item in batch if item.error is None])
        except Exception:  # committed and answered already: the leader's answer stands
            logger.exception("group commit: after-batch step failed")


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def _let_others_arrive(window_s: float) -> None:
    """Under gevent: yield until the event loop has nothing else ready, at most `window_s`."""
    import gevent

    with gevent.Timeout(window_s, False):
        gevent.idle()
