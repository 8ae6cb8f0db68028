"""Prometheus metrics, one set per node shared by every web, worker and beat process.

gunicorn and Celery run many processes; each writes its samples into mmap files of one
directory (`PROMETHEUS_MULTIPROC_DIR`, default `$PARLEY_DATA_DIR/metrics`) and `/metrics` merges
them (`MultiProcessCollector`). prometheus_client picks its storage from that variable when a
metric is built, so `configure()` sets it first; metrics are built on first use.

The directory is wiped only by the first process to arrive while no other process holds it (an
advisory lock every process keeps for life), so a service restart starts from zero but a
restarted gunicorn worker never erases its siblings' counters. Dead processes are marked by
gunicorn's `child_exit` (gunicorn.conf.py) and Celery's `worker_process_shutdown`
(worker.py), which drops their live gauges (open WebSockets).

Other parts use the helpers (`task_finished`, `moderation_verdict`, ...) or the metric objects
as module attributes: `core.metrics.ws_connections.inc()`, `core.metrics.push_results.labels(
provider="webpush", outcome="ok").inc()`.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "parley_"
HTTP_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Metrics:
    http_request_seconds: Histogram
    task_seconds: Histogram
    tasks: Counter
    task_queue_wait_seconds: Histogram
    ws_connections: Gauge
    push_results: Counter
    moderation_verdicts: Counter
    rate_limited: Counter


_lock = threading.Lock()
_metrics: Metrics | None = None
_dir: Path | None = None
_dir_lock: IO[str] | None = None  # held (shared) for the life of the process and its forks


def default_dir() -> Path:
    """Where this node's processes keep their samples: the variable, else the data dir."""
    explicit = os.environ.get(ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("PARLEY_DATA_DIR") or "var").resolve() / "metrics"


def directory() -> Path:
    """The directory this process writes to (configuring it with the default if needed)."""
    configure()
    assert _dir is not None
    return _dir


def configure(path: Path | None = None) -> Metrics:
    """Choose the samples directory (once per process) and build the metrics."""
    global _metrics, _dir, _dir_lock
    with _lock:
        if _metrics is not None:
            return _metrics
        target = Path(os.environ.get(ENV) or path or default_dir())
        target.mkdir(parents=True, exist_ok=True)
        os.environ[ENV] = str(target)  # read by prometheus_client for every value it creates
        _dir_lock = _claim(target)
        _dir = target
        _metrics = _build()
        return _metrics


def _claim(target: Path) -> IO[str]:
    """Wipe stale samples if no live process uses the directory, then hold it shared."""
    handle = open(target / ".lock", "a")  # noqa: SIM115 - kept open for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # others are alive: their samples stay
    else:
        for stale in target.glob("*.db"):
            stale.unlink(missing_ok=True)
    fcntl.flock(handle, fcntl.LOCK_SH)
    atexit.register(handle.close)
    return handle


def _build() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram, values

    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client was imported before the variable was set: switch it over now.
        values.ValueClass = values.get_value_class()
    return Metrics(
        http_request_seconds=Histogram(
            PREFIX + "http_request_duration_seconds",
            "HTTP request latency by route (endpoint name), method and status class.",
            ["endpoint", "method", "status"],
            buckets=HTTP_BUCKETS,
        ),
        task_seconds=Histogram(
            PREFIX + "task_duration_seconds",
            "Time a pipeline stage (Celery task) ran, by task name.",
            ["task"],
            buckets=TASK_BUCKETS,
        ),
        tasks=Counter(
            PREFIX + "tasks",
            "Task executions by task name and outcome (success, failure, retry...).",
            ["task", "outcome"],
        ),
        task_queue_wait_seconds=Histogram(
            PREFIX + "task_queue_wait_seconds",
            "Time from enqueue (or ETA) to start, by queue: the per-queue lag.",
            ["queue"],
            buckets=WAIT_BUCKETS,
        ),
        ws_connections=Gauge(
            PREFIX + "ws_connections",
            "Open WebSocket connections, summed over this node's live web processes.",
            multiprocess_mode="livesum",
        ),
        push_results=Counter(
            PREFIX + "push_results",
            "Push delivery attempts by provider (webpush, webhook, email, platform) and outcome.",
            ["provider", "outcome"],
        ),
        moderation_verdicts=Counter(
            PREFIX + "moderation_verdicts",
            "Moderation verdicts by action and label (label 'none' when nothing was found).",
            ["action", "label"],
        ),
        rate_limited=Counter(
            PREFIX + "rate_limited",
            "Requests refused with 429, by limit.",
            ["limit"],
        ),
    )


def get() -> Metrics:
    return _metrics or configure()


def __getattr__(name: str) -> Any:
    """`core.metrics.ws_connections` and friends, built on first use."""
    if name in Metrics.__dataclass_fields__:
        return getattr(get(), name)
    raise AttributeError(name)


# --- helpers for the rest of the code ---------------------------------------------------------


_request_series: dict[tuple[str, str, int], Any] = {}  # (endpoint, method, class) -> child


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Every request's latency; its labelled series is looked up once per process (the label
    values are route names, methods and status classes: a few hundred at most)."""
    key = (endpoint, method, status // 100)
    series = _request_series.get(key)
    if series is None:
        series = get().http_request_seconds.labels(endpoint, method, f"{key[2]}xx")
        _request_series[key] = series
    series.observe(seconds)


def task_finished(task: str, outcome: str, seconds: float | None) -> None:
    m = get()
    m.tasks.labels(task, outcome.lower() or "success").inc()
    if seconds is not None:
        m.task_seconds.labels(task).observe(seconds)


def task_waited(queue: str, seconds: float) -> None:
    get().task_queue_wait_seconds.labels(queue or "unknown").observe(max(seconds, 0.0))


def moderation_verdict(action: str, labels: list[str]) -> None:
    counter = get().moderation_verdicts
    for label in labels or ["none"]:
        counter.labels(action, label).inc()


def push_result(provider: str, outcome: str) -> None:
    get().push_results.labels(provider, outcome).inc()


def mark_dead(pid: int) -> None:
    """Drop a finished process's live gauges; its counters stay so totals never go back."""
    from prometheus_client import multiprocess

    path = _dir or default_dir()
    if path.is_dir():
        multiprocess.mark_process_dead(pid, str(path))


def render(extra: list[Any] | None = None) -> tuple[bytes, str]:
    """The exposition of every process of this node, plus `extra` scrape-time collectors."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory()))
    for collector in extra or []:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
