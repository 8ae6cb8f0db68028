"""Peer benchmark: Parley side by side with Matrix Synapse on a common chat benchmark's three
scenarios, each side's real server processes on the same box, one after the other, in one run.

    .venv/bin/python -m bench.peer [--synapse] [--runs 1] [--messages 500,1000,100]
                                   [--group 50] [--workers 2 | --solo] [--postgres] [--keep]
                                   [--pace-ms 0]

Scenarios (N messages in total, each sender posting its share one after the other, flat out):
- 1→1: one sender, one receiver, N=500;
- 8→1: eight sender threads (eight users, each in a direct conversation with the one
  receiver), N=1,000;
- 1→50: one sender, 50 receivers in one group conversation, N=100.
Latency: just before the POST (Parley) / PUT (Synapse) → receipt at the receiver: the
`message.new` frame on its WebSocket (Parley), the event in the answer to its long-polling
`/sync` loop (Synapse, how Matrix clients receive). Throughput: N (and N x receivers for
deliveries) / first send → last receipt. Server CPU per message: user + system time of every
server process over the scenario (psutil): Parley's gunicorn web, Celery worker (with its
children), beat and private redis-server, and with `--postgres` the PostgreSQL server (its
postmaster's tree: the backends serving the run and its background writers; nothing else uses
the server meanwhile); Synapse's one process, whose SQLite runs inside it. Each scenario
first sends a few warm-up messages (not measured), and checks that every receiver got every
message exactly once and each sender's in order: otherwise the run fails (exit 1) after
writing its JSON.

Parley runs from the Procfile's command lines (bench/stack.py) on SQLite (`--postgres`: a fresh
PostgreSQL database) with rate limits off (`--pace-ms N`: with ingest pacing past N ms of
pipeline lag, docs/architecture.md; `--solo`: the worker as one `--pool solo` process, the
option docs/deploy.md describes for pipeline workers). `--synapse` also installs Synapse (pinned,
bench/peer_synapse.py) into its own venv under bench/out/, runs the same scenarios against its
client-server API, and prints the ratios Parley / Synapse and the targets. Figures (medians
over --runs, with the spread) go to bench/out/peer.json. `--profile` records Parley's web and
worker with py-spy in each measured phase (bench/out/profile-peer-*; it slows them down).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from bench import report
from bench.peer_common import Inbox, Scenario, Setup, check, cpu_snapshot, cpu_used
from bench.peer_parley import parley
from bench.peer_synapse import synapse
from bench.profile import Profiler, add_profile_argument
from bench.stack import percentile

WARMUP = 8  # messages per scenario before the measured ones: first use (Celery children, caches)
# scenario key → target on Parley / Synapse: msgs/s (1→1, 8→1), deliveries/s (1→group)
THROUGHPUT = {"1to1": 10, "8to1": 10, "1to50": 20}
P99_TARGET = 0.2  # Parley's p99 at most 1/5 of Synapse's


class Side(Protocol):
    name: str
    version: str
    roots: dict[str, int]

    def prepare(self, sc: Scenario, tag: str) -> Setup: ...


def scenarios(messages: list[int], group: int) -> list[Scenario]:
    n11, n81, n150 = messages
    plan = [
        Scenario("1to1", 1, 1, n11),
        Scenario("8to1", 8, 1, n81),
        Scenario("1to50", 1, group, n150),
    ]
    return [sc for sc in plan if sc.messages > 0]  # 0 leaves a scenario out


def send(setup: Setup, shares: list[int], first: int) -> tuple[list[list[str]], dict[str, float]]:
    """Each sender (its own thread) posts its share one after the other: message ids in each
    sender's order, and when each send started."""
    at: dict[str, float] = {}

    def one_sender(k: int) -> list[str]:
        post, ids = setup.senders[k], []
        for i in range(first, first + shares[k]):
            t0 = time.perf_counter()
            mid = post(i)
            at[mid] = t0
            ids.append(mid)
        return ids

    with ThreadPoolExecutor(len(shares)) as pool:
        sent = list(pool.map(one_sender, range(len(shares))))
    return sent, at


def await_all(inboxes: list[Inbox], sent: list[list[str]], timeout: float) -> bool:
    ids = [mid for each in sent for mid in each]
    for inbox in inboxes:
        inbox.expect(ids)
    deadline = time.monotonic() + timeout
    return all(inbox.wait(deadline) for inbox in inboxes)


def run_scenario(
    side: Side, sc: Scenario, run: int, timeout: float, profile: str | None = None
) -> dict[str, Any]:
    tag = f"{sc.key}-{run}-{secrets.token_hex(3)}"
    setup = side.prepare(sc, tag)
    try:
        warm = [max(1, WARMUP // sc.senders)] * sc.senders
        warm_sent, _ = send(setup, warm, 0)
        await_all(setup.inboxes, warm_sent, 180)
        time.sleep(0.5)  # the warm-up's leftovers (push checks, cursors) out of the way
        profiler = Profiler(profile)
        for name in ("web", "worker") if profile else ():  # Parley's: gunicorn, Celery
            profiler.attach(side.roots[name], f"peer-{sc.key}-{name}")
        if profile:
            time.sleep(1.0)  # py-spy attached before the first message
        before = cpu_snapshot(side.roots)
        start = time.perf_counter()
        sent, at = send(setup, sc.shares(), warm[0])
        posted = time.perf_counter() - start
        await_all(setup.inboxes, sent, timeout)
        cpu = cpu_used(before, cpu_snapshot(side.roots))
        profiler.stop()
    finally:
        setup.close()
    problems = check([w + s for w, s in zip(warm_sent, sent, strict=True)], setup.inboxes)
    lat, last = [], start
    for inbox in setup.inboxes:
        firsts: dict[str, float] = {}
        for mid, t in inbox.got:
            firsts.setdefault(mid, t)
        for mid, t in firsts.items():
            if mid in at:
                lat.append((t - at[mid]) * 1000)
                last = max(last, t)
    elapsed = last - start
    n, r = sc.messages, sc.receivers
    return {
        "messages": n,
        "receivers": r,
        "deliveries": len(lat),
        "seconds": round(elapsed, 3),
        "posting_seconds": round(posted, 3),  # first send → last send answered
        "msgs_per_s": round(n / elapsed, 1) if elapsed else 0.0,
        "deliveries_per_s": round(len(lat) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(lat, 0.5), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "cpu_ms_per_message": round(sum(cpu.values()) * 1000 / n, 2),
        "cpu_ms_per_message_by_process": {k: round(v * 1000 / n, 2) for k, v in cpu.items()},
        "exactly_once": not problems,
        "problems": problems[:20],
    }


def run_side(
    side: Side, plan: list[Scenario], run: int, timeout: float, profile: str | None = None
) -> dict[str, Any]:
    out = {}
    for sc in plan:
        progress(f"{side.name}: {sc.label}, {sc.messages} messages")
        out[sc.key] = result = run_scenario(side, sc, run, timeout, profile)
        progress(
            f"{side.name}: {sc.label}: {result['msgs_per_s']} msgs/s, "
            f"{result['deliveries_per_s']} deliveries/s, p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms, CPU {result['cpu_ms_per_message']} ms/msg, posting "
            f"{result['posting_seconds']} s of {result['seconds']} s, "
            f"exactly once: {'yes' if result['exactly_once'] else 'NO'}"
        )
        for problem in result["problems"]:
            print(f"    {problem}", file=sys.stderr, flush=True)
    return out


def progress(line: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)


METRICS = ("msgs_per_s", "deliveries_per_s", "p50_ms", "p99_ms", "cpu_ms_per_message")


def summarize(runs: list[dict[str, Any]], plan: list[Scenario]) -> dict[str, Any]:
    """Per scenario and metric: the median over the runs and the spread [min, max]."""
    out: dict[str, Any] = {}
    for sc in plan:
        out[sc.key] = {}
        for key in METRICS:
            values = [run[sc.key][key] for run in runs]
            out[sc.key][key] = {
                "median": statistics.median(values),
                "spread": [min(values), max(values)],
            }
        out[sc.key]["exactly_once"] = all(run[sc.key]["exactly_once"] for run in runs)
    return out


def figures(plan: list[Scenario], ours: dict[str, Any], peer: dict[str, Any] | None) -> list:
    """Parley's medians, Synapse's as the baseline, and the targets when Synapse ran."""
    out = []
    for sc in plan:
        factor = THROUGHPUT[sc.key]
        rows = [  # (metric, figure, unit, target)
            ("msgs_per_s", "throughput", "msgs/s", "" if sc.receivers > 1 else f">= {factor}"),
            ("p50_ms", "p50", "ms", ""),
            ("p99_ms", "p99", "ms", f"<= {P99_TARGET}"),
            ("cpu_ms_per_message", "server CPU per message", "ms", ""),
        ]
        if sc.receivers > 1:
            rows.insert(1, ("deliveries_per_s", "deliveries", "/s", f">= {factor}"))
        for key, figure, unit, target in rows:
            out.append(
                report.Figure(
                    "peer",
                    f"{sc.label}, {sc.messages} msgs: {figure}",
                    unit,
                    ours[sc.key][key]["median"],
                    peer[sc.key][key]["median"] if peer else None,
                    f"ratio {target}" if peer and target else "",
                )
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--synapse", action="store_true", help="also run Matrix Synapse")
    parser.add_argument("--runs", type=int, default=1, help="runs (medians and spread)")
    parser.add_argument(
        "--messages",
        default="500,1000,100",
        help="N for 1→1, 8→1 and 1→group (comma-separated; 0 leaves one out)",
    )
    parser.add_argument("--group", type=int, default=50, help="receivers in the group scenario")
    parser.add_argument("--workers", type=int, default=2, help="Parley's worker children")
    parser.add_argument(
        "--solo", action="store_true", help="Parley's worker: one --pool solo process (no children)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="s to wait for receipts")
    parser.add_argument("--postgres", action="store_true", help="Parley on PostgreSQL")
    parser.add_argument(
        "--pace-ms", type=float, default=0, help="Parley's PARLEY_INGEST_PACE_LAG_MS (0: off)"
    )
    add_profile_argument(parser, "Parley's web and worker (not timed runs)")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dirs with the logs")
    args = parser.parse_args()
    plan = scenarios([int(n) for n in args.messages.split(",")], args.group)
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {"parley": [], "synapse": []}
    versions = {}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", flush=True)
        with parley(args.keep, args.postgres, args.workers, args.pace_ms, args.solo) as ours:
            runs["parley"].append(run_side(ours, plan, run, args.timeout, args.profile))
        if args.synapse:
            with synapse(args.keep) as theirs:
                versions["synapse"] = theirs.version
                runs["synapse"].append(run_side(theirs, plan, run, args.timeout))
    median = {side: summarize(r, plan) for side, r in runs.items() if r}
    peer = median.get("synapse")
    failed = [
        f"{side}: {key}" for side, m in median.items() for key in m if not m[key]["exactly_once"]
    ]
    print(f"\nPeer bench, median of {args.runs} run(s) (spread in brackets)")
    for sc in plan:
        for key in METRICS:
            line = f"  {sc.label:<6}{key:<20}"
            for side, m in median.items():
                cell = m[sc.key][key]
                line += f"  {side} {cell['median']:>9} [{cell['spread'][0]}-{cell['spread'][1]}]"
            print(line)
    details = {
        "args": vars(args),
        "versions": versions,
        "exactly_once": not failed,
        "median": median,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.write("peer", figures(plan, median["parley"], peer), details)
    if failed:
        print(f"FAILED: not exactly once, in order: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
