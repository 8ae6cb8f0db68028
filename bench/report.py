"""Figures, their baselines and targets: one shape for every benchmark, one table for all.

Each benchmark writes `bench/out/<name>.json` with a `figures` list (see `Figure`) next to its
own details; `python -m bench` gathers the figures of the benchmarks it ran into
`bench/out/report.json` and prints one table: figure, Parley, baseline, ratio, target, met.
"""

from __future__ import annotations

import json
import math
import operator
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# PARLEY_BENCH_OUT redirects the JSON (the test suite's smoke runs write to a temp dir).
OUT = Path(os.environ.get("PARLEY_BENCH_OUT") or Path(__file__).resolve().parent / "out")
_COMPARE = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Figure:
    """One measured figure. `target` reads "ratio <= 4" (against the baseline of the same
    run) or "value >= 20000" (absolute, where no bare baseline makes sense)."""

    scenario: str
    name: str
    unit: str
    value: float
    baseline: float | None = None
    target: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or math.isnan(self.baseline):
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        subject, op, limit = self.target.split()
        measured = self.ratio if subject == "ratio" else self.value
        if measured is None or math.isnan(measured):
            return False
        return bool(_COMPARE[op](measured, float(limit)))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def write(name: str, figures: Iterable[Figure], details: dict[str, Any]) -> Path:
    """bench/out/<name>.json with the figures first, then whatever else the benchmark kept."""
    figures = list(figures)
    doc = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "figures": [f.as_json() for f in figures],
        **details,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(figures))
    print(f"JSON: {path}")
    return path


def load(name: str) -> list[Figure]:
    path = OUT / f"{name}.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text(encoding="utf-8"))
    fields = ("scenario", "name", "unit", "value", "baseline", "target")
    return [Figure(**{k: f[k] for k in fields}) for f in doc.get("figures", [])]


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def table(figures: Iterable[Figure]) -> str:
    head = f"{'scenario':<12} {'figure':<40} {'Parley':>10} {'baseline':>10} {'ratio':>7} "
    head += f"{'target':<16} met"
    lines = [head, "-" * len(head)]
    for f in figures:
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        met = {True: "yes", False: "MISSED", None: ""}[f.met]
        lines.append(
            f"{f.scenario:<12} {f.name + ' (' + f.unit + ')':<40} {_num(f.value):>10} "
            f"{_num(f.baseline):>10} {ratio:>7} {f.target:<16} {met}"
        )
    return "\n".join(lines)


def combine(names: Iterable[str]) -> Path:
    """bench/out/report.json from the named benchmarks' outputs, and the table on stdout."""
    figures = [f for name in names for f in load(name)]
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "figures": [f.as_json() for f in figures],
        "missed": [f"{f.scenario}: {f.name}" for f in figures if f.met is False],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "report.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(table(figures))
    return path
