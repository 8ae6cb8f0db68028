"""Ingest benchmark: POST /v1/conversations/{id}/messages requests/s on the Procfile's gunicorn,
next to a bare Flask JSON endpoint under the same command line in the same run.

    .venv/bin/python -m bench.ingest [--seconds 10] [--clients 2] [--threads 8] [--rate-limits]

Each side gets --clients load processes of --threads keep-alive connections posting flat out
for --seconds (after a 2 s warm-up); the figure is 2xx responses per second. The bare endpoint
parses the JSON body and answers 202 with an id, as Parley does; Parley also authenticates the
JWT, checks membership, encrypts, commits the row and its outbox entry, and enqueues the
pipeline task. No worker runs: this is the web node's own ceiling. Rate limits are off
(bench/stack.py) unless `--rate-limits`, which turns them on with budgets no run reaches, so
the figure includes what checking them costs (two Redis counters per POST). Besides req/s it
reports the CPU per request of the web process(es) (CPU seconds of every gunicorn worker over
the timed run / requests answered), for both sides. Figures go to bench/out/ingest.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from flask import Flask, request

from bench import report
from bench.profile import Profiler, add_profile_argument
from bench.stack import Stack, cpu_s, http_json, percentile, services

TARGET = "ratio >= 0.4"
CPU_TARGET = "value <= 1.5"  # ms of web-process CPU per POST (issue #17)


def bare_app() -> Flask:
    """The baseline: parse a JSON body, answer 202 with an id."""
    app = Flask("bare")

    @app.post("/messages")
    def post() -> tuple[dict[str, Any], int]:
        body = request.get_json()
        return {"id": uuid.uuid4().hex, "length": len(body.get("text", ""))}, 202

    return app


def load(port: int, paths: list[tuple[str, str]], threads: int, seconds: float) -> dict[str, Any]:
    """One load process: `threads` keep-alive connections posting until the time is up."""
    stop_at = time.perf_counter() + seconds
    ok, errors = [0], [0]
    lat: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        path, token = paths[k % len(paths)]
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        n, mine = 0, []
        while time.perf_counter() < stop_at:
            body = json.dumps({"text": f"the van arrives at {n % 24}h, booking {k}-{n}"})
            t0 = time.perf_counter()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t0)
            with lock:
                if 200 <= resp.status < 300:
                    ok[0] += 1
                else:
                    errors[0] += 1
            n += 1
        with lock:
            lat.extend(mine)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"ok": ok[0], "errors": errors[0], "latencies": lat}


def web_workers(stack: Stack) -> list[int]:
    """The pids of the gunicorn workers of the web process `stack` started last."""
    master = stack.procs[-1].pid
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def blast(
    port: int,
    paths: list[tuple[str, str]],
    clients: int,
    threads: int,
    seconds: float,
    pids: list[int],
) -> dict[str, Any]:
    """Warm up, then load for `seconds`; the CPU of `pids` (the web workers) is read around
    the timed part only."""
    with ProcessPoolExecutor(clients) as pool:
        warm = [pool.submit(load, port, paths, threads, 2.0) for _ in range(clients)]
        for f in warm:
            f.result()
        cpu0 = sum(cpu_s(pid) for pid in pids)
        runs = [pool.submit(load, port, paths, threads, seconds) for _ in range(clients)]
        parts = [f.result() for f in runs]
        cpu = sum(cpu_s(pid) for pid in pids) - cpu0
    lat = [x * 1000 for p in parts for x in p["latencies"]]
    ok = sum(p["ok"] for p in parts)
    return {
        "requests_per_s": round(ok / seconds, 1),
        "ok": ok,
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "cpu_ms_per_request": round(1000 * cpu / max(ok, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="load processes")
    parser.add_argument("--threads", type=int, default=8, help="connections per load process")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--web-processes", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir with the logs")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL, not SQLite")
    add_profile_argument(parser, "the web process")
    parser.add_argument(
        "--rate-limits", action="store_true", help="limits on (as in production), never reached"
    )
    args = parser.parse_args()
    with services(args.keep, args.postgres) as stack:
        if args.rate_limits:
            stack.env.update(
                PARLEY_RATE_LIMITS="on",
                PARLEY_LIMIT_POST_USER="1000000/minute",
                PARLEY_LIMIT_POST_IP="1000000/minute",
                PARLEY_LIMIT_CONVERSATION_USER="1000000/minute",
                PARLEY_LIMIT_CONVERSATION_IP="1000000/minute",
            )
        port, web_pid = stack.web("web", processes=args.web_processes)
        paths = []
        for i in range(args.conversations):
            tok = stack.token(f"bench-s{i}")
            body = {"type": "direct", "members": [f"bench-r{i}"]}
            cid = http_json(port, "POST", "/v1/conversations", body, tok)["id"]
            paths.append((f"/v1/conversations/{cid}/messages", tok))
        print(
            f"  parley: {args.clients}x{args.threads} connections, {args.seconds:g} s", flush=True
        )
        profiler = Profiler(args.profile)
        if args.profile:
            profiler.attach(web_pid, "ingest-web")
        pids = web_workers(stack)
        parley = blast(port, paths, args.clients, args.threads, args.seconds, pids)
        profiler.stop()
        bare_port, _ = stack.web("bare", "bench.ingest:bare_app()", processes=args.web_processes)
        print(f"  bare Flask: same load, {args.seconds:g} s", flush=True)
        bare = blast(
            bare_port,
            [("/messages", "")],
            args.clients,
            args.threads,
            args.seconds,
            web_workers(stack),
        )
    if parley["errors"] or bare["errors"]:
        print(f"WARNING: errors: parley {parley['errors']}, bare {bare['errors']}")
    figures = [
        report.Figure(
            "ingest",
            f"POST /messages, {args.web_processes} web process(es), "
            + ("PostgreSQL" if args.postgres else "SQLite")
            + (", rate limits on" if args.rate_limits else ""),
            "req/s",
            parley["requests_per_s"],
            bare["requests_per_s"],
            TARGET,
        ),
        report.Figure(
            "ingest", "POST latency p50 under load", "ms", parley["p50_ms"], bare["p50_ms"]
        ),
        report.Figure(
            "ingest", "POST latency p99 under load", "ms", parley["p99_ms"], bare["p99_ms"]
        ),
        report.Figure(
            "ingest",
            "web CPU per POST",
            "ms",
            parley["cpu_ms_per_request"],
            bare["cpu_ms_per_request"],
            CPU_TARGET,
        ),
    ]
    report.write("ingest", figures, {"args": vars(args), "parley": parley, "bare": bare})


if __name__ == "__main__":
    main()
