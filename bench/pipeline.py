"""Pipeline benchmark: POST → `message.new` on the recipient's WebSocket, next to bare Celery.

    .venv/bin/python -m bench.pipeline [--messages 600] [--rate 50] [--seconds 10]
                                       [--workers 2] [--conversations 8] [--senders 4]
                                       [--web-processes 1] [--postgres] [--broker URL]

Runs the real service from the Procfile's command lines (bench/stack.py): one gunicorn gevent
web process and one Celery worker (`--workers` children) on a private Redis and SQLite data dir.
Recipients hold WebSockets; senders POST over HTTP with keep-alive connections.

- Throughput: --messages posted flat out by --senders threads across --conversations direct
  conversations; first POST → last `message.new` received. Baseline: the same number of bare
  three-task Celery chains (bench/baseline_celery.py, as many stages as Parley's pipeline:
  moderate → fan-out → push) on the same worker command line, first send → last chain's
  second stage done.
- Latency: --rate messages/s for --seconds in one conversation; POST start → `message.new` on
  the socket, p50 and p99. Baseline: bare send → task start at the same rate.

Both sides run on the same box in the same run; the figures go to bench/out/pipeline.json.
`--broker amqp://guest:guest@127.0.0.1:5672//` runs both sides on RabbitMQ (their queues purged
first) instead of the private Redis. After the run the worker's log gives where the time went:
per-task durations, and the moderation stage's batch sizes and its verdict / fan-out split.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from bench import report
from bench.profile import Profiler, add_profile_argument
from bench.stack import Stack, http_json, percentile, services

PARLEY_QUEUES = ("pipeline", "media", "push", "maintenance")
TARGETS = {"throughput": "ratio >= 1.0", "p50": "ratio <= 3", "p99": "ratio <= 4"}


class Receipts:
    """When each token was first seen, wherever it was seen (sockets, streams)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def mark(self, token: str) -> None:
        now = time.perf_counter()
        with self.lock:
            self.seen.setdefault(token, now)

    def wait(self, tokens: set[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                if tokens <= self.seen.keys():
                    return
            time.sleep(0.005)


def socket_reader(url: str, receipts: Receipts, ready: threading.Event) -> None:
    """One recipient's WebSocket: every `message.new` id is a receipt."""
    import websocket

    ws = websocket.create_connection(url, timeout=5)
    ws.send('{"type":"ping"}')
    ready.set()
    while not receipts.stop.is_set():
        try:
            raw = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        if isinstance(raw, str) and raw.startswith('{"type":"message.new"'):
            receipts.mark(json.loads(raw)["data"]["id"])
    ws.close()


def stream_reader(client: redis.Redis, key: str, receipts: Receipts) -> None:
    last = "$"
    while not receipts.stop.is_set():
        reply: Any = client.xread({key: last}, block=200, count=1000)
        for _, entries in reply or []:
            for eid, fields in entries:
                last = eid
                receipts.mark(fields[b"token"].decode())


def settle(stack: Stack, queues: tuple[str, ...], timeout: float = 120) -> None:
    """Wait until the broker holds no task (queued or unacked): a phase's leftovers (push
    intents, the chains' third stage) must not queue ahead of the next phase's work."""
    broker = stack.env["CELERY_BROKER_URL"]
    if broker.startswith("amqp"):
        idle = _amqp_idle(broker, queues)
    else:
        client = redis.Redis.from_url(broker)

        def idle() -> bool:
            pending = sum(int(client.llen(q)) for q in queues)
            return pending == 0 and not client.hlen("unacked")

    deadline = time.monotonic() + timeout
    while not idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)


def _amqp_idle(url: str, queues: tuple[str, ...]) -> Callable[[], bool]:
    """RabbitMQ: no message ready or unacknowledged in any of the queues."""
    import kombu

    def idle() -> bool:
        with kombu.Connection(url) as conn:
            channel = conn.channel()
            for q in queues:
                try:
                    ok = channel.queue_declare(queue=q, passive=True)
                except Exception:  # not declared yet: nothing in it
                    channel = conn.channel()
                    continue
                if ok.message_count:  # ready ones; unacked ones end within the phase
                    return False
            return True

    return idle


def purge(url: str, queues: tuple[str, ...]) -> None:
    """Empty the RabbitMQ queues a run uses (a shared broker may hold an earlier run's tasks)."""
    import kombu

    with kombu.Connection(url) as conn:
        for q in queues:
            with contextlib.suppress(Exception):  # not declared yet: nothing to purge
                conn.channel().queue_purge(q)


def where_time_went(log: Path) -> dict[str, Any]:
    """From the worker's log: per-task durations by stage, and the moderation stage's batches
    (verdicts per batch, conversations per fan-out, ms spent on verdicts and on fan-out)."""
    tasks: dict[str, list[float]] = {}
    batches: list[tuple[int, int, float, float]] = []
    stage = re.compile(r"stage (\S+) \w+ in ([\d.]+) ms")
    batch = re.compile(
        r"moderation batch: (\d+) verdict\(s\), (\d+) conversation\(s\) fanned out, "
        r"verdicts ([\d.]+) ms, fan-out ([\d.]+) ms"
    )
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if m := stage.search(line):
            tasks.setdefault(m.group(1), []).append(float(m.group(2)))
        elif m := batch.search(line):
            batches.append((int(m[1]), int(m[2]), float(m[3]), float(m[4])))
    out: dict[str, Any] = {
        name: {
            "n": len(ms),
            "p50_ms": round(percentile(ms, 0.5), 2),
            "p99_ms": round(percentile(ms, 0.99), 2),
            "total_s": round(sum(ms) / 1000, 2),
        }
        for name, ms in sorted(tasks.items())
    }
    working = [b for b in batches if b[0]]
    out["moderation batches"] = {
        "runs": len(batches),
        "with verdicts": len(working),
        "verdicts per batch, mean": round(sum(b[0] for b in working) / max(1, len(working)), 1),
        "verdicts per batch, max": max((b[0] for b in working), default=0),
        "conversations per fan-out, mean": round(
            sum(b[1] for b in working) / max(1, len(working)), 1
        ),
        "verdicts ms p50": round(percentile([b[2] for b in batches], 0.5), 2),
        "fan-out ms p50": round(percentile([b[3] for b in batches], 0.5), 2),
        "verdicts s total": round(sum(b[2] for b in batches) / 1000, 2),
        "fan-out s total": round(sum(b[3] for b in batches) / 1000, 2),
    }
    return out


def measure(
    send: Callable[[int], str],
    receipts: Receipts,
    n: int,
    rate: float | None,
    senders: int,
    timeout: float = 180,
) -> dict[str, float]:
    """Send n (flat out from `senders` threads, or one at `rate`/s); wait for every receipt."""
    sent: dict[str, float] = {}
    start = time.perf_counter()

    def one(i: int) -> None:
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        t0 = time.perf_counter()
        sent[send(i)] = t0

    if rate:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(senders) as pool:
            list(pool.map(one, range(n)))
    receipts.wait(set(sent), timeout)
    seen = receipts.seen
    lat = [(seen[k] - t0) * 1000 for k, t0 in sent.items() if k in seen]
    elapsed = max(seen.get(k, start) for k in sent) - start
    return {
        "n": n,
        "received": len(lat),
        "per_s": round(len(lat) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
    }


class Poster:
    """POSTs messages over one keep-alive connection per thread."""

    def __init__(self, port: int, convs: list[tuple[str, str]]) -> None:
        self.port, self.convs = port, convs  # (conversation id, sender token)
        self.local = threading.local()

    def __call__(self, i: int) -> str:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        cid, token = self.convs[i % len(self.convs)]
        body = json.dumps({"text": f"about booking {uuid.uuid4().hex[:8]}: arriving at {i % 24}h"})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request("POST", f"/v1/conversations/{cid}/messages", body, headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 202:
            raise RuntimeError(f"POST: {resp.status} {raw[:200]!r}")
        return str(json.loads(raw)["id"])


def run_parley(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    port, web_pid = stack.web("web", processes=args.web_processes)
    worker = stack.worker("worker", args.workers)
    receipts = Receipts()
    convs: list[tuple[str, str]] = []
    threads = []
    for i in range(args.conversations):
        sender, recipient = f"bench-s{i}", f"bench-r{i}"
        tok = stack.token(sender)
        conv = http_json(
            port, "POST", "/v1/conversations", {"type": "direct", "members": [recipient]}, tok
        )
        convs.append((conv["id"], tok))
        ready = threading.Event()
        url = f"ws://127.0.0.1:{port}/v1/ws?token={stack.token(recipient)}"
        t = threading.Thread(target=socket_reader, args=(url, receipts, ready), daemon=True)
        t.start()
        threads.append(t)
        ready.wait(10)
    try:
        post_all = Poster(port, convs)
        post_one = Poster(port, convs[:1])
        progress("parley: warm-up")
        measure(post_all, receipts, 40, None, args.senders)
        progress(f"parley: throughput, {args.messages} messages")
        profiler = Profiler(args.profile)
        if args.profile:
            profiler.attach(worker.pid, "pipeline-worker")
            profiler.attach(web_pid, "pipeline-web")
        burst = measure(post_all, receipts, args.messages, None, args.senders)
        profiler.stop()
        settle(stack, PARLEY_QUEUES)
        progress(f"parley: latency, {args.rate:g} msgs/s for {args.seconds:g} s")
        steady = measure(post_one, receipts, int(args.rate * args.seconds), args.rate, 1)
    finally:
        receipts.stop.set()
        stack.stop(worker)
    timings = where_time_went(stack.tmp / "worker.log")
    print(json.dumps(timings, indent=1))
    return {"burst": burst, "steady": steady, "worker": timings}


def run_baseline(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    worker = stack.worker("baseline", args.workers, "bench.baseline_celery", "baseline")
    from bench import baseline_celery as bare

    receipts = Receipts()
    client = redis.Redis.from_url(stack.redis_url)
    for key in ("baseline:done", "baseline:started"):
        threading.Thread(target=stream_reader, args=(client, key, receipts), daemon=True).start()

    def chain(i: int) -> str:
        token = uuid.uuid4().hex
        bare.stage1.delay(token)
        return token

    def start(i: int) -> str:
        token = uuid.uuid4().hex
        bare.started.delay(token)
        return token

    try:
        time.sleep(1.0)  # the readers are blocked on XREAD: nothing sent is missed
        progress("baseline: warm-up")
        measure(chain, receipts, 40, None, args.senders)
        progress(f"baseline: throughput, {args.messages} chains")
        burst = measure(chain, receipts, args.messages, None, args.senders)
        settle(stack, ("baseline",))
        progress(f"baseline: latency, {args.rate:g} tasks/s")
        steady = measure(start, receipts, int(args.rate * args.seconds), args.rate, 1)
    finally:
        receipts.stop.set()
        stack.stop(worker)
    return {"burst": burst, "steady": steady}


def progress(line: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)


def figures(
    parley: dict[str, Any], base: dict[str, Any], workers: int, db: str
) -> list[report.Figure]:
    rows = [  # (figure, unit, phase, key, target)
        (f"throughput, {workers} worker children, {db}", "msgs/s", "burst", "per_s", "throughput"),
        ("POST → socket p50 vs send → task start", "ms", "steady", "p50_ms", "p50"),
        ("POST → socket p99 vs send → task start", "ms", "steady", "p99_ms", "p99"),
    ]
    return [
        report.Figure("pipeline", name, unit, parley[ph][key], base[ph][key], TARGETS[target])
        for name, unit, ph, key, target in rows
    ]


def setup(args: argparse.Namespace) -> str:
    """The database, and the broker and web processes where not the defaults."""
    parts = ["PostgreSQL" if args.postgres else "SQLite"]
    if args.broker.startswith("amqp"):
        parts.append("RabbitMQ")
    if args.web_processes != 1:
        parts.append(f"{args.web_processes} web processes")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="worker children (--concurrency)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--senders", type=int, default=4, help="POSTing threads")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir with the logs")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL, not SQLite")
    add_profile_argument(parser, "the throughput phase")
    parser.add_argument("--web-processes", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--broker", default="", help="broker URL (default: the private Redis)")
    parser.add_argument(
        "--no-search-index",
        action="store_true",
        help="PARLEY_SEARCH_INDEX=false: the pipeline without the search index (the index's"
        " cost is the ratio to a run without this)",
    )
    args = parser.parse_args()
    with services(args.keep, args.postgres) as stack:
        if args.no_search_index:
            stack.env["PARLEY_SEARCH_INDEX"] = "false"
        if args.broker:
            stack.env["CELERY_BROKER_URL"] = args.broker
            if args.broker.startswith("amqp"):
                purge(args.broker, (*PARLEY_QUEUES, "baseline"))
        os.environ.update({k: v for k, v in stack.env.items() if k != "PYTHONPATH"})
        parley = run_parley(stack, args)
        base = run_baseline(stack, args)
    lost = parley["burst"]["n"] - parley["burst"]["received"]
    if lost:
        print(f"WARNING: {lost} message(s) not received within the timeout", file=sys.stderr)
    report.write(
        "pipeline-no-search-index" if args.no_search_index else "pipeline",
        figures(parley, base, args.workers, setup(args)),
        {"args": vars(args), "parley": parley, "baseline": base},
    )


if __name__ == "__main__":
    main()
