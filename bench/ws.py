"""WebSocket benchmark: idle sockets one web process holds, and fan-out latency to 1,000 sockets,
each next to a bare flask-sock app on the same gunicorn gevent worker in the same run.

    .venv/bin/python -m bench.ws [--sockets 10000] [--members 1000] [--messages 20] [--profile]

Starts a private redis-server, a SQLite data dir (migrated), one Celery worker, one Parley web
process (`gunicorn --worker-class gevent --workers 1 web.wsgi:app`) and the baseline (the
20-line flask-sock echo/broadcast app below, same gunicorn settings), all on loopback, and
client processes (gevent + websocket-client) that open the sockets. Measures:

(a) N idle sockets held: Parley's sockets are authenticated (JWT in the URL, one user each),
    registered with the hub and answered a ping; RSS per connection of the worker process is
    (RSS with N open - RSS with none open after a warm-up) / N.
(b) one message posted (`POST /v1/conversations/{cid}/messages`) to a 1,000-member group, all
    members connected: POST start → `message.new` received on each socket, p50/p99 over every
    socket and message. The baseline receives a POST and writes the body to its 1,000 sockets.

Prints a table with ratios (Parley / baseline) and writes bench/out/ws.json. Each fan-out also
reports the CPU time per message of the web process, the Celery worker (with its children) and
the client processes: on a small box the clients compete with the servers for the same cores.

`--profile` records the fan-out phase with py-spy (bench/profile.py): Parley's web worker
(`ws-web`), its Celery worker (`ws-worker`) and the baseline's web worker (`ws-bare-web`), and
runs the Parley web process with LOG_LEVEL=DEBUG to report the hub's stages per dispatch round
(wake-up → round start, stream read, render, socket writes; see `Hub._deliver`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask_sock import Sock

from bench import report
from bench.profile import Profiler, add_profile_argument
from bench.stack import (
    Stack,
    cpu_s,
    http_json,
    percentile,
    raise_fd_limit,
    rss_kb,
    services,
)
from core.events import STREAM_PREFIX

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"bench-mark-(\d+)")
WARMUP = 4  # messages fanned out before the measured ones (both Parley and the baseline)
HUB_ROUND = re.compile(
    r"hub round: (\d+) user\(s\), started ([\d.]+), read ([\d.]+) ms, render ([\d.]+) ms, "
    r"queued ([\d.]+) ms, CPU ([\d.]+) ms"
)


def baseline_app() -> Flask:
    """The baseline: a bare flask-sock app that echoes, and broadcasts a POST body to all."""
    app = Flask("baseline")
    sock = Sock(app)
    clients: set[Any] = set()

    @sock.route("/ws")
    def echo(ws: Any) -> None:
        clients.add(ws)
        try:
            while (data := ws.receive()) is not None:
                ws.send(data)
        finally:
            clients.discard(ws)

    @app.post("/broadcast")
    def broadcast() -> tuple[str, int]:
        body = request.get_data(as_text=True)
        for ws in list(clients):
            with suppress(Exception):
                ws.send(body)
        return "", 204

    return app


# --- processes ----------------------------------------------------------------------------------


# --- clients --------------------------------------------------------------------------------------


class ClientGroup:
    """Client processes holding sockets; each prints `ready`, `mark <k>`, `samples <json>`."""

    def __init__(self, stack: Stack, spec: dict[str, Any], users: range, processes: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        size = -(-len(users) // processes)
        for i in range(processes):
            part = users[i * size : (i + 1) * size]
            if not part:
                continue
            client_spec = {**spec, "first": part.start, "stop": part.stop}
            self.procs.append(
                stack.spawn(
                    f"client-{spec['kind']}-{i}",
                    [sys.executable, "-m", "bench.ws", "--client", json.dumps(client_spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        self.marks: dict[int, int] = {}  # message marker → processes that saw it on every socket

    def _line(self, proc: subprocess.Popen[bytes]) -> list[str]:
        assert proc.stdout is not None
        raw = proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"client {proc.pid} exited (see its log in the bench tmp dir)")
        return raw.decode().split(" ", 1)

    def ready(self) -> int:
        opened = 0
        for proc in self.procs:
            kind, rest = self._line(proc)
            assert kind == "ready", (kind, rest)
            opened += int(rest)
        return opened

    def await_mark(self, *marks: int) -> None:
        """Until every socket got each of `marks` (in any order)."""
        for proc in self.procs:
            seen = set()
            for _ in marks:
                kind, rest = self._line(proc)
                assert kind == "mark", (kind, rest)
                seen.add(int(rest))
            assert seen == set(marks), (seen, marks)

    def close(self) -> list[tuple[int, float]]:
        samples: list[tuple[int, float]] = []
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"close\n")
            proc.stdin.flush()
        for proc in self.procs:
            kind, rest = self._line(proc)
            assert kind == "samples", kind
            samples += [(int(m), float(t)) for m, t in json.loads(rest)]
            proc.wait(60)
        return samples


def client_main(spec: dict[str, Any]) -> None:
    """One client process: open sockets (bounded concurrency), read them all, report."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import jwt
    import websocket
    from gevent.fileobject import FileObject
    from gevent.lock import Semaphore
    from gevent.pool import Pool

    raise_fd_limit()
    out_lock = Semaphore()
    users = range(spec["first"], spec["stop"])
    seen: dict[int, int] = {}
    samples: list[tuple[int, float]] = []
    sockets: list[Any] = []

    def say(line: str) -> None:
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def url(i: int) -> str:
        if spec["kind"] == "bare":
            return spec["url"]
        exp = int(time.time()) + 3600
        token = jwt.encode({"sub": f"bench-{i}", "exp": exp}, spec["secret"], algorithm="HS256")
        return f"{spec['url']}?token={token}"

    def reader(ws: Any) -> None:
        with suppress(Exception):
            while True:
                data = ws.recv()
                found = MARK.search(data) if isinstance(data, str) else None
                if found:
                    mark = int(found.group(1))
                    samples.append((mark, time.time()))
                    seen[mark] = seen.get(mark, 0) + 1
                    if seen[mark] == len(sockets):
                        say(f"mark {mark}")

    def open_one(i: int) -> None:
        for attempt in range(5):
            try:
                # websocket-client checks UTF-8 in pure Python, byte by byte: with it, the
                # clients' CPU grows with the frame size and starves the servers on a small box
                # (Parley's message.new frames are ~8x the baseline's).
                ws = websocket.create_connection(url(i), timeout=60, skip_utf8_validation=True)
                ws.send('{"type":"ping"}')
                while '"pong"' not in (reply := ws.recv()) and reply != '{"type":"ping"}':
                    pass
                sockets.append(ws)
                gevent.spawn(reader, ws)
                return
            except Exception:
                gevent.sleep(0.2 * (attempt + 1))

    Pool(spec.get("concurrency", 64)).map(open_one, users)
    say(f"ready {len(sockets)}")
    FileObject(sys.stdin.fileno(), "rb").readline()  # "close"
    say("samples " + json.dumps(samples))
    for ws in sockets:
        with suppress(Exception):
            ws.sock.close()


# --- measurements -------------------------------------------------------------------------------


def hold_idle(
    stack: Stack, kind: str, port: int, pid: int, n: int, processes: int, secret: str
) -> dict[str, Any]:
    path = "/v1/ws" if kind == "parley" else "/ws"
    spec = {"kind": kind, "url": f"ws://127.0.0.1:{port}{path}", "secret": secret}
    warm = ClientGroup(stack, spec, range(n, n + 20), 1)  # starts the hub, imports everything
    warm.ready()
    warm.close()
    time.sleep(1.0)  # let the warm-up sockets finish closing before the "before" reading
    before = rss_kb(pid)
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    group = ClientGroup(stack, spec, range(n), processes)
    opened = group.ready()
    took = time.perf_counter() - t0
    cpu = cpu_s(pid) - cpu0
    time.sleep(1.0)  # settle: the last handshakes' buffers
    after = rss_kb(pid)
    group.close()
    return {
        "sockets": opened,
        "connect_s": round(took, 2),
        "connects_per_s": round(opened / took, 1),
        "server_cpu_ms_per_connect": round(cpu * 1000 / max(opened, 1), 2),
        "rss_before_mb": round(before / 1024, 1),
        "rss_after_mb": round(after / 1024, 1),
        "kb_per_socket": round((after - before) / max(opened, 1), 2),
    }


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (Celery's prefork children)."""
    total = 0.0
    with suppress(OSError):
        total += cpu_s(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu_s(int(child))
    return total


def fanout(
    stack: Stack,
    kind: str,
    port: int,
    members: int,
    messages: int,
    processes: int,
    secret: str,
    send: Any,
    watch: Any = None,
    servers: dict[str, int] | None = None,
    profile: dict[str, int] | None = None,
    profile_mode: str | None = None,
) -> dict[str, Any]:
    """`servers`: processes (name → pid) whose CPU time per message is reported; `profile`:
    processes (profile name → pid) py-spy records while the messages fan out, in
    `profile_mode` (bench/profile.py's MODES)."""
    path = "/v1/ws" if kind == "parley" else "/ws"
    spec = {"kind": kind, "url": f"ws://127.0.0.1:{port}{path}", "secret": secret}
    group = ClientGroup(stack, spec, range(members), processes)
    opened = group.ready()
    # Not measured: the first messages also pay for first use (each Celery child builds its
    # app on its first task, SQL statements compile once): a cold start would be the p99.
    # Sent two at a time, so that the second task finds the first child busy and warms the
    # other one (one at a time, the same child would take them all).
    warm = range(messages, messages + WARMUP)
    for k in warm[::2]:
        pair = [m for m in (k, k + 1) if m in warm]
        for m in pair:
            send(m)
        group.await_mark(*pair)
    if watch is not None:
        watch(rewind=True)
    pids = {**(servers or {}), **{f"client-{i}": p.pid for i, p in enumerate(group.procs)}}
    profiler = Profiler(profile_mode)
    for name, pid in (profile or {}).items():
        profiler.attach(pid, name)
    if profile:
        time.sleep(1.0)  # py-spy attaches before the first message
    cpu0 = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    posted: dict[int, float] = {}
    appended: list[float] = []
    for k in range(messages):
        posted[k] = time.time()
        send(k)
        if watch is not None:
            appended.append((watch() - posted[k]) * 1000)
        group.await_mark(k)
    cpu = {name: tree_cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
    profiler.stop()
    samples = [(m, t) for m, t in group.close() if m in posted]
    clients = sum(v for name, v in cpu.items() if name.startswith("client-"))
    cpu_ms = {name: v for name, v in cpu.items() if not name.startswith("client-")}
    cpu_ms["clients"] = clients
    lat = [(t - posted[m]) * 1000 for m, t in samples]
    last = [max((t - posted[m]) * 1000 for mm, t in samples if mm == m) for m in posted]
    return {
        "sockets": opened,
        "messages": messages,
        "received": len(lat),
        "p50_ms": round(percentile(lat, 0.50), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "last_socket_p50_ms": round(statistics.median(last), 1),
        **({"stream_append_p50_ms": round(statistics.median(appended), 1)} if appended else {}),
        "cpu_ms_per_message": {k: round(v * 1000 / messages, 1) for k, v in cpu_ms.items()},
        "last_socket_ms": [round(v, 1) for v in last],  # per message: one slow one is the p99
        "posted": posted,
    }


def hub_rounds(log: Path, posted: dict[int, float], members: int) -> dict[str, Any]:
    """The hub's stages (DEBUG lines of `Hub._deliver`) for the rounds that served a message
    to (most of) the group, p50 over the messages: POST start → round start, stream read,
    render, queueing/writing the frames."""
    starts = sorted(posted.values())
    stages: dict[str, list[float]] = {k: [] for k in hub_keys()}
    for found in HUB_ROUND.finditer(log.read_text(errors="replace")):
        users, started, read, render, queued, cpu = found.groups()
        if int(users) < members // 2:
            continue
        t = float(started)
        before = [p for p in starts if p <= t]
        if not before:
            continue
        stages["wake"].append((t - before[-1]) * 1000)
        stages["read"].append(float(read))
        stages["render"].append(float(render))
        stages["queued"].append(float(queued))
        stages["cpu"].append(float(cpu))
    return {f"hub_{k}_p50_ms": round(statistics.median(v), 1) for k, v in stages.items() if v} | {
        "hub_rounds": len(stages["read"]),
        "hub_rounds_ms": [
            [round(v, 1) for v in row] for row in zip(*stages.values(), strict=True)
        ],  # per round: wake, read, render, queued, CPU
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    with services(args.keep) as stack:
        secret = stack.secret
        worker = stack.worker("worker", 2)
        if args.profile:  # the hub's per-round stage timings (Hub._deliver)
            stack.env["LOG_LEVEL"] = "DEBUG"
        p_port, p_pid = stack.web("parley")
        stack.env.pop("LOG_LEVEL", None)
        b_port, b_pid = stack.web("baseline", "bench.ws:baseline_app()")
        n, procs = args.sockets, args.clients
        idle = {
            "parley": hold_idle(stack, "parley", p_port, p_pid, n, procs, secret),
            "baseline": hold_idle(stack, "bare", b_port, b_pid, n, procs, secret),
        }
        owner = stack.token("bench-0")
        members = [f"bench-{i}" for i in range(1, args.members)]
        cid = http_json(
            p_port, "POST", "/v1/conversations", {"type": "group", "members": members}, owner
        )["id"]

        def post(k: int) -> None:
            body = {"text": f"bench-mark-{k} the shuttle leaves at nine"}
            http_json(p_port, "POST", f"/v1/conversations/{cid}/messages", body, owner)

        def broadcast(k: int) -> None:
            frame = {"type": "message.new", "data": {"text": f"bench-mark-{k} the shuttle"}}
            http_json(b_port, "POST", "/broadcast", json.dumps(frame))

        import redis

        watcher = redis.Redis.from_url(stack.env["REDIS_URL"])
        watched = STREAM_PREFIX + f"bench-{args.members - 1}"
        last_seen: list[Any] = ["0-0"]

        def appended(rewind: bool = False) -> float:
            """When the last member's stream got the message: Parley's pipeline alone (an
            upper bound when the append beat this XREAD). `rewind`: start after its newest
            entry (the warm-up's messages are not waited for here)."""
            if rewind:
                newest = watcher.xrevrange(watched, count=1)
                last_seen[0] = newest[0][0] if newest else "0-0"
                return time.time()
            reply: Any = watcher.xread({watched: last_seen[0]}, block=30_000)
            now = time.time()
            last_seen[0] = reply[0][1][-1][0]
            return now

        fan_procs = min(procs, 4)
        parley = fanout(
            stack,
            "parley",
            p_port,
            args.members,
            args.messages,
            fan_procs,
            secret,
            post,
            appended,
            servers={"web": p_pid, "worker": worker.pid},
            profile={"ws-web": p_pid, "ws-worker": worker.pid} if args.profile else None,
            profile_mode=args.profile,
        )
        if args.profile:
            parley |= hub_rounds(stack.tmp / "parley.log", parley["posted"], args.members)
        baseline = fanout(
            stack,
            "bare",
            b_port,
            args.members,
            args.messages,
            fan_procs,
            secret,
            broadcast,
            servers={"web": b_pid},
            profile={"ws-bare-web": b_pid} if args.profile else None,
            profile_mode=args.profile,
        )
        for side in (parley, baseline):
            del side["posted"]
        fan = {"parley": parley, "baseline": baseline}
    return {"idle": idle, "fanout": fan}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def summarize(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def med(path: tuple[str, str, str]) -> float:
        return float(statistics.median(r[path[0]][path[1]][path[2]] for r in results))

    rows = [
        ("idle sockets held", ("idle", "{}", "sockets"), "{:.0f}"),
        ("connects/s", ("idle", "{}", "connects_per_s"), "{:.0f}"),
        ("web CPU per connect (ms)", ("idle", "{}", "server_cpu_ms_per_connect"), "{:.2f}"),
        ("RSS before (MB)", ("idle", "{}", "rss_before_mb"), "{:.1f}"),
        ("RSS after (MB)", ("idle", "{}", "rss_after_mb"), "{:.1f}"),
        ("RSS per socket (KB)", ("idle", "{}", "kb_per_socket"), "{:.2f}"),
        (f"fan-out to {args.members}: p50 (ms)", ("fanout", "{}", "p50_ms"), "{:.1f}"),
        (f"fan-out to {args.members}: p99 (ms)", ("fanout", "{}", "p99_ms"), "{:.1f}"),
        ("fan-out: last socket p50 (ms)", ("fanout", "{}", "last_socket_p50_ms"), "{:.1f}"),
        ("fan-out frames received", ("fanout", "{}", "received"), "{:.0f}"),
    ]
    appended = [r["fanout"]["parley"].get("stream_append_p50_ms") for r in results]
    summary: dict[str, Any] = {}
    print(f"\nWebSocket bench, median of {len(results)} run(s)")
    print(f"{'metric':<34}{'Parley':>12}{'baseline':>12}{'ratio':>9}")
    for label, (phase, _, key), fmt in rows:
        p = med((phase, "parley", key))
        b = med((phase, "baseline", key))
        summary[f"{phase}.{key}"] = {"parley": p, "baseline": b}
        print(f"{label:<34}{fmt.format(p):>12}{fmt.format(b):>12}{_ratio(p, b):>9}")
    if all(a is not None for a in appended):
        part = statistics.median(a for a in appended if a is not None)
        summary["fanout.stream_append_p50_ms"] = part
        print(f"  of which POST -> in the streams (Celery pipeline), p50: {part:.1f} ms")
    hub = [
        k for k in results[0]["fanout"]["parley"] if k.startswith("hub_") and k != "hub_rounds_ms"
    ]
    for key in hub:
        value = statistics.median(r["fanout"]["parley"][key] for r in results)
        summary[f"fanout.{key}"] = value
    if hub:
        print(
            "  hub, p50 per message: POST -> round start {wake} ms, stream read {read} ms, "
            "render {render} ms, frames queued/written {queued} ms; the round's CPU {cpu} ms "
            "({rounds} rounds)".format(
                **{k: summary.get(f"fanout.hub_{k}_p50_ms", "-") for k in hub_keys()},
                rounds=summary["fanout.hub_rounds"],
            )
        )
    for side in ("parley", "baseline"):
        cpu = results[-1]["fanout"][side]["cpu_ms_per_message"]
        print(f"  CPU per message, {side}: " + ", ".join(f"{k} {v} ms" for k, v in cpu.items()))
    return summary


def hub_keys() -> tuple[str, ...]:
    return ("wake", "read", "render", "queued", "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=1_000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir with the logs")
    add_profile_argument(parser, "the fan-out phase (and report the hub's stage timings)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return
    started = time.perf_counter()
    results = []
    for k in range(args.runs):
        print(f"  run {k + 1}/{args.runs}: {args.sockets} idle sockets, fan-out to {args.members}")
        results.append(run(args))
    summary = summarize(results, args)

    def pair(key: str) -> tuple[float, float]:
        return summary[key]["parley"], summary[key]["baseline"]

    fan = f"fan-out to {args.members} live sockets"
    figures = [
        report.Figure(
            "connections",
            "idle sockets held",
            "sockets",
            *pair("idle.sockets"),
            f"value >= {args.sockets}",
        ),
        report.Figure(
            "connections",
            "memory per idle socket",
            "KB",
            *pair("idle.kb_per_socket"),
            "ratio <= 1.3",
        ),
        report.Figure("fan-out", f"{fan}, p50", "ms", *pair("fanout.p50_ms")),
        report.Figure("fan-out", f"{fan}, p99", "ms", *pair("fanout.p99_ms"), "ratio <= 2"),
    ]
    details = {
        "args": {k: v for k, v in vars(args).items() if k != "client"},
        "median": summary,
        "runs": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.write("ws", figures, details)


if __name__ == "__main__":
    main()
