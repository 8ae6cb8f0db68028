"""Sampling profiles of benchmark processes with py-spy, summarized for docs/performance.md.

`Profiler.attach(pid, name)` starts `py-spy record` on a running process (and its children:
Celery's prefork pool) while a scenario runs; `stop()` ends the recordings and writes, per
process, the collapsed stacks (bench/out/profile-<name>.txt, for flame-graph tools) and the
functions with the largest share of samples, inclusive and self (printed, and in
bench/out/profile-<name>.top.txt).

Two modes, chosen with each benchmark's `--profile [gil]`: by default py-spy samples every
thread it finds running, which includes time spent waiting inside C (SQLite's lock, a socket
send, a pipe read); `gil` keeps only the samples of the thread holding the GIL, so the shares
are those of Python's own CPU: what to read when the question is where the CPU goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.report import OUT

ROOT = Path(__file__).resolve().parents[1]

TOP = 25
MODES = ("cpu", "gil")


def add_profile_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """Each benchmark's `--profile [gil]` (None when absent, else one of MODES)."""
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cpu",
        choices=MODES,
        help=f"py-spy {what}; `--profile gil`: only samples holding the GIL (Python's CPU)",
    )


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: make venv (it is in requirements-dev.txt)")
    return found


class Profiler:
    def __init__(self, mode: str | None = "cpu") -> None:
        self.gil = mode == "gil"
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def attach(self, pid: int, name: str, rate: int = 250) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        raw = OUT / f"profile-{name}.txt"
        argv = [_py_spy(), "record", "--pid", str(pid), "--rate", str(rate)]
        argv += ["--gil"] if self.gil else []
        argv += ["--subprocesses", "--format", "raw", "--output", str(raw)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.running.append((name, proc))

    def stop(self) -> None:
        for _, proc in self.running:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        for name, proc in self.running:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            summary = summarize(OUT / f"profile-{name}.txt")
            (OUT / f"profile-{name}.top.txt").write_text(summary + "\n", encoding="utf-8")
            print(f"\nprofile of {name}:\n{summary}")
        self.running = []


def summarize(raw: Path, top: int = TOP) -> str:
    """Where the on-CPU samples went: Parley's own functions (inclusive share) and the hottest
    functions of any origin (self share). Threads parked on a Redis subscription or in an
    event loop's poll are left out: py-spy cannot always tell them from running ones."""
    if not raw.exists():
        return f"(no profile: {raw} missing)"
    ours: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames or any(f.startswith(PARKED) for f in frames):
            continue
        n = int(count)
        total += n
        for label in {label for label, mine in map(_where, frames) if mine}:
            ours[label] += n
        own[_where(frames[-1])[0]] += n
    if not total:
        return "(no on-CPU samples)"
    lines = [f"{total} samples; Parley's functions by share of samples on the stack:"]
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in ours.most_common(top)]
    lines.append("hottest functions by own (self) share:")
    lines += [f"{100 * n / total:6.1f}%  {f}" for f, n in own.most_common(12)]
    return "\n".join(lines)


PARKED = (
    "PubSub.get_message",
    "_epoll.poll",
    "KeyForgetter._run",
    "acquire_with_timeout",  # gevent's threadpool threads waiting for work
)
_OURS = ("web/", "tasks/", "models/", "moderation/", "storage/", "core/", "domain/", "push/")
_OUR_MODULES = ("celery_config.py", "worker.py")


def _where(frame: str) -> tuple[str, bool]:
    """`func (…/site-packages/pkg/mod.py:12)` → (`func (pkg/mod.py)`, whether it is Parley's)."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    root = str(ROOT) + "/"
    if path.startswith(root):
        path = path[len(root) :]
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})", path.startswith(_OURS) or path in _OUR_MODULES
