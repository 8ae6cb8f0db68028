"""Timeline benchmark: where a lone message's POST → socket latency goes, stage by stage.

    .venv/bin/python -m bench.timeline [--messages 200] [--rate 20] [--workers 2] [--postgres]

One sender posts --messages at --rate (one conversation, keep-alive HTTP, after 10 warm-up
messages each waited for on the socket), one receiver holds a WebSocket; the service runs
from the Procfile's command lines (bench/stack.py), the web process at LOG_LEVEL=DEBUG for
the hub's round lines. Each message's
way is cut at points five clocks of the same box give, and the p50 / p90 of each stage
printed:

- POST: the client's send → its 202 (and, from the web's access line, the app's share);
- to verdict: the 202 → the moderation stage's `moderated …` line (the broker hop, the task's
  start, the stage's reads and the moderation itself);
- to stream: that line → the receiver's stream entry (Redis's own clock, the entry id: the
  verdict's commit and the fan-out's reads);
- to hub round: the stream entry → the start of the hub round that rendered it (the wake-up);
- hub round: its render, in CPU ms, as the hub's DEBUG line gives it;
- to socket: the round's start → the frame at the receiver.

Log lines carry milliseconds, so the stages are good to about a millisecond each, and the
total (send → frame) is the client's own clock. Figures go to bench/out/timeline.json; no
baseline and no target: this is the breakdown the pipeline benchmark's latency is made of.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import statistics
import threading
import time
from datetime import datetime
from typing import Any

import redis
import requests

from bench import report
from bench.stack import http_json, percentile, services

WARMUP = 10
_STAMP = "%Y-%m-%d %H:%M:%S,%f"  # core/logs.TextFormatter's asctime
_MODERATED = re.compile(r"^(\S+ \S+) INFO domain\.moderation_stage: moderated .*message_id=(\w+)")
_POSTED = re.compile(r"POST /v1/conversations/\S+/messages 202 .*duration_ms=([0-9.]+)")
_ROUND = re.compile(r"hub round: \d+ user\(s\), started ([0-9.]+), .*CPU ([0-9.]+) ms")


def _at(stamp: str) -> float:
    return datetime.strptime(stamp, _STAMP).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--workers", type=int, default=2, help="worker children")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL, not SQLite")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir with the logs")
    args = parser.parse_args()

    with services(args.keep, args.postgres) as stack:
        stack.env["LOG_LEVEL"] = "DEBUG"  # the hub's round lines
        port, _ = stack.web("web")
        stack.env["LOG_LEVEL"] = "INFO"
        stack.worker("worker", args.workers)
        sender, receiver = "timeline-a", "timeline-b"
        token = stack.token(sender)
        body = {"type": "direct", "members": [receiver]}
        cid = http_json(port, "POST", "/v1/conversations", body, token)["id"]
        frames: dict[str, float] = {}
        stop = threading.Event()
        ready = threading.Event()
        reader = threading.Thread(
            target=_receive, args=(port, stack.token(receiver), frames, ready, stop), daemon=True
        )
        reader.start()
        if not ready.wait(30):
            raise RuntimeError("the receiver's socket did not open")
        _warm_up(port, cid, token, frames)
        sent = _send(port, cid, token, args.messages, args.rate)
        deadline = time.monotonic() + 30
        while not sent.keys() <= frames.keys() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        reader.join(5)
        stream = _stream_times(stack.redis_url, set(sent))
        worker_log = (stack.tmp / "worker.log").read_text()
        web_log = (stack.tmp / "web.log").read_text()

    verdicts = {
        m.group(2): _at(m.group(1)) for m in map(_MODERATED.match, worker_log.splitlines()) if m
    }
    app_ms = [float(m.group(1)) for m in _POSTED.finditer(web_log)][-len(sent) :]
    rounds = sorted((float(m.group(1)), float(m.group(2))) for m in _ROUND.finditer(web_log))
    starts = [start for start, _ in rounds]
    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "POST",
            "to verdict",
            "to stream",
            "to hub round",
            "hub round CPU",
            "to socket",
            "total",
        )
    }
    for mid, (t0, t1) in sent.items():
        if mid not in frames or mid not in verdicts or mid not in stream:
            continue
        k = bisect.bisect_left(starts, stream[mid] - 0.001)  # stream ids have ms resolution
        if k == len(starts) or starts[k] > frames[mid]:
            continue
        start, cpu = rounds[k]
        got = frames[mid]
        for name, ms in (
            ("POST", t1 - t0),
            ("to verdict", verdicts[mid] - t1),
            ("to stream", stream[mid] - verdicts[mid]),
            ("to hub round", start - stream[mid]),
            ("to socket", got - start),
            ("total", got - t0),
        ):
            stages[name].append(ms * 1000)
        stages["hub round CPU"].append(cpu)
    matched = len(stages["total"])
    if not matched:
        raise SystemExit("no message could be followed through the logs")
    print(f"{matched} of {len(sent)} messages followed (p50 / p90, ms):")
    figures = []
    for name, values in stages.items():
        p50, p90 = statistics.median(values), percentile(values, 90)
        print(f"  {name:15s} {p50:7.2f} {p90:7.2f}")
        figures.append(report.Figure("timeline", f"{name} p50", "ms", round(p50, 2)))
    if app_ms:
        print(f"  (POST in the app, access line: p50 {statistics.median(app_ms):.2f} ms)")
    report.write(
        "timeline",
        figures,
        {"args": vars(args), "followed": matched, "sent": len(sent), "app_post_ms": app_ms},
    )


def _warm_up(port: int, cid: str, token: str, frames: dict[str, float]) -> None:
    """WARMUP messages, each waited for on the socket: the worker's children are up, and every
    process has served the path once, before anything is measured."""
    for i in range(WARMUP):
        mid = http_json(port, "POST", f"/v1/conversations/{cid}/messages", {"text": f"w{i}"}, token)
        deadline = time.monotonic() + 60
        while mid["id"] not in frames:
            if time.monotonic() > deadline:
                raise RuntimeError("a warm-up message never reached the socket")
            time.sleep(0.01)


def _send(port: int, cid: str, token: str, n: int, rate: float) -> dict[str, tuple[float, float]]:
    """Post n messages at `rate`; (send, answer) wall times of each."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{port}/v1/conversations/{cid}/messages"
    sent: dict[str, tuple[float, float]] = {}
    for i in range(n):
        t0 = time.time()
        resp = session.post(url, json={"text": f"see you at nine, number {i}"}, timeout=30)
        t1 = time.time()
        if resp.status_code != 202:
            raise RuntimeError(f"POST: {resp.status_code} {resp.text[:200]}")
        sent[resp.json()["id"]] = (t0, t1)
        time.sleep(max(0.0, 1 / rate - (t1 - t0)))
    return sent


def _receive(
    port: int, token: str, frames: dict[str, float], ready: threading.Event, stop: threading.Event
) -> None:
    """The receiver: `ready` once the hub answered a ping (registered), then every
    `message.new` frame's arrival, first one per message."""
    import websocket

    url = f"ws://127.0.0.1:{port}/v1/ws?token={token}"
    ws = websocket.create_connection(url, timeout=1, skip_utf8_validation=True)
    ws.send('{"type":"ping"}')
    while '"pong"' not in ws.recv():
        pass
    ready.set()
    try:
        while not stop.is_set():
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            at = time.time()
            if isinstance(raw, str) and raw.startswith('{"type":"message.new"'):
                frames.setdefault(json.loads(raw)["data"]["id"], at)
    finally:
        ws.close()


def _stream_times(url: str, ids: set[str]) -> dict[str, float]:
    """When each message's `message.new` entered a stream: its entry id's milliseconds."""
    client: Any = redis.Redis.from_url(url)  # replies as bytes
    found: dict[str, float] = {}
    for key in client.scan_iter(count=1000):
        if client.type(key) != b"stream":
            continue
        for entry_id, fields in client.xrange(key):
            blob = b" ".join(fields.values()).decode(errors="ignore")
            m = re.search(r'"message_id":\s*"(\w+)"', blob)
            if m and m.group(1) in ids:
                found.setdefault(m.group(1), int(entry_id.split(b"-")[0]) / 1000)
    return found


if __name__ == "__main__":
    main()
