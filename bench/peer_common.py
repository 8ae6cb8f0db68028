"""What both sides of the peer benchmark (bench/peer.py) share: the scenarios, a receiver's
inbox, the exactly-once check, and the CPU time of a server's process trees."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

import psutil

TEXTS = (
    "Hi, is the booking for Saturday still on?",
    "Yes, we arrive at nine, two adults and a dog.",
    "Great, the keys are in the box by the door.",
    "Thanks! Could you leave the heating on?",
)


@dataclass(frozen=True)
class Scenario:
    """`senders` threads post `messages` in total (each its share, one after the other) to
    `receivers` users: one conversation per sender with the one receiver, or one group."""

    key: str
    senders: int
    receivers: int
    messages: int

    @property
    def label(self) -> str:
        return f"{self.senders}→{self.receivers}"

    def shares(self) -> list[int]:
        base, extra = divmod(self.messages, self.senders)
        return [base + (1 if k < extra else 0) for k in range(self.senders)]


class Inbox:
    """What one receiver got, in arrival order: (message id, perf_counter() at receipt)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, float]] = []
        self.problems: list[str] = []
        self._seen: set[str] = set()
        self._wanted: set[str] = set()
        self._missing = 0
        self._lock = threading.Lock()
        self._complete = threading.Event()

    def add(self, mid: str, at: float) -> None:
        with self._lock:
            self.got.append((mid, at))
            if mid not in self._seen:
                self._seen.add(mid)
                if mid in self._wanted:
                    self._missing -= 1
                    if not self._missing:
                        self._complete.set()

    def problem(self, what: str) -> None:
        with self._lock:
            self.problems.append(what)

    def expect(self, ids: Iterable[str]) -> None:
        """From now on `wait()` returns once every one of `ids` has been received."""
        with self._lock:
            self._wanted = set(ids)
            self._missing = len(self._wanted - self._seen)
            self._complete.clear()
            if not self._missing:
                self._complete.set()

    def wait(self, deadline: float) -> bool:
        return self._complete.wait(max(0.0, deadline - time.monotonic()))


@dataclass
class Setup:
    """A scenario's users and conversations on one side, its receivers listening: `senders[k]
    (i)` posts sender k's i-th message and returns its id; `close()` stops the receivers."""

    senders: list[Callable[[int], str]]
    inboxes: list[Inbox]
    close: Callable[[], None]
    notes: dict[str, str] = field(default_factory=dict)


def listening(
    readers: Sequence[Callable[[Inbox, threading.Event], None]], join_s: float
) -> tuple[list[Inbox], Callable[[], None]]:
    """Each receiver's reader in its own thread, filling its own inbox until `close()`."""
    stop = threading.Event()
    inboxes = [Inbox() for _ in readers]
    threads = [
        threading.Thread(target=read, args=(inbox, stop), daemon=True)
        for read, inbox in zip(readers, inboxes, strict=True)
    ]
    for thread in threads:
        thread.start()

    def close() -> None:
        stop.set()
        for thread in threads:
            thread.join(join_s)

    return inboxes, close


def text(i: int) -> str:
    return TEXTS[i % len(TEXTS)]


def check(sent: list[list[str]], inboxes: list[Inbox]) -> list[str]:
    """Every receiver got every message exactly once, each sender's in the order it sent them
    (each sender waits for one POST's answer before the next: the server's order must agree);
    the receivers' own problems (a closed socket, a sync gap) too."""
    every = {mid for ids in sent for mid in ids}
    problems: list[str] = []
    for r, inbox in enumerate(inboxes):
        got = [mid for mid, _ in inbox.got]
        counts = Counter(got)
        missing = every - counts.keys()
        extra = counts.keys() - every
        twice = [mid for mid, n in counts.items() if n > 1]
        for what, ids in (("missing", missing), ("unexpected", extra), ("duplicated", twice)):
            if ids:
                problems.append(f"receiver {r}: {len(ids)} {what}, e.g. {sorted(ids)[:3]}")
        first: dict[str, int] = {}
        for pos, mid in enumerate(got):
            first.setdefault(mid, pos)
        for k, ids in enumerate(sent):
            order = [first[mid] for mid in ids if mid in first]
            if order != sorted(order):
                problems.append(f"receiver {r}: sender {k}'s messages out of order")
        problems.extend(f"receiver {r}: {p}" for p in inbox.problems)
    return problems


def cpu_snapshot(roots: dict[str, int]) -> dict[tuple[str, int, float], float]:
    """User + system CPU seconds of each root process and its descendants, by (root name,
    pid, start time): a pid reused by a new process is a new key."""
    out: dict[tuple[str, int, float], float] = {}
    for name, pid in roots.items():
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            with suppress(psutil.Error):
                times = proc.cpu_times()
                out[(name, proc.pid, proc.create_time())] = times.user + times.system
    return out


def cpu_used(before: dict[tuple[str, int, float], float], after: dict) -> dict[str, float]:
    """CPU seconds each root's tree used between two snapshots (processes started in between
    count from zero; those that ended in between are lost, which the servers' are not)."""
    used: dict[str, float] = {}
    for key, seconds in after.items():
        used[key[0]] = used.get(key[0], 0.0) + seconds - before.get(key, 0.0)
    return used
