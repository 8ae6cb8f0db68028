"""`make bench` / `python -m bench`: run every benchmark in turn, each in its own process.

Each benchmark starts what it needs (a private Redis, a data dir, and Parley's processes from
the Procfile's command lines), prints its figures with the baseline measured in the same run,
the ratio and the target, and writes its JSON to bench/out/. At the end the figures of every
benchmark run go into bench/out/report.json and one table (bench/report.py).
`python -m bench NAME...` runs only those; `--quick` passes each its small settings, for a
smoke run (its figures are not comparable with the targets).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parents[1]

# name: (module, full-size arguments, quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "moderation": ("bench.moderation", [], []),
    "pipeline": ("bench.pipeline", [], ["--messages", "200", "--seconds", "3"]),
    "ingest": ("bench.ingest", [], ["--seconds", "3"]),
    "timeline": ("bench.timeline", [], ["--messages", "20"]),
    "ws": ("bench.ws", [], ["--sockets", "500", "--members", "200", "--messages", "5"]),
    "thumbnails": ("bench.thumbnails", [], ["--images", "2", "--rounds", "1"]),
    "search": (
        "bench.search",
        [],
        ["--messages", "2000", "--conversations", "50", "--queries", "20", "--moderate", "200"],
    ),
    "peer": ("bench.peer", [], ["--messages", "40,80,10", "--group", "10"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"some of: {', '.join(BENCHMARKS)} (default: all present)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    names = args.names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed, ran = [], []
    for i, name in enumerate(names, 1):
        module, full, quick = BENCHMARKS[name]
        if not (ROOT / (module.replace(".", "/") + ".py")).exists():
            print(f"[{i}/{len(names)}] {name}: not present in this checkout, skipped", flush=True)
            continue
        print(f"[{i}/{len(names)}] {name}: running {module} ...", flush=True)
        started = time.monotonic()
        code = subprocess.call(
            [sys.executable, "-m", module, *(quick if args.quick else full)], cwd=ROOT
        )
        print(
            f"[{i}/{len(names)}] {name}: exit {code} after {time.monotonic() - started:.0f} s",
            flush=True,
        )
        if code:
            failed.append(name)
        else:
            ran.append(name)
    print()
    path = report.combine(ran)
    print(f"\nreport: {path}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
