"""The benchmark suite itself: its report's arithmetic, and a smoke run of a service benchmark
(the real Procfile web process, a private Redis, the bare baseline) so `make bench` cannot rot.
The figures of a smoke run are not checked against targets: timing is not a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import Figure, table
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("figure", "ratio", "met"),
    [
        (Figure("s", "f", "x", 50.0, 100.0, "ratio >= 0.4"), 0.5, True),
        (Figure("s", "f", "x", 30.0, 100.0, "ratio >= 0.4"), 0.3, False),
        (Figure("s", "f", "ms", 9.0, 2.0, "ratio <= 4"), 4.5, False),
        (Figure("s", "f", "msgs/s", 25_000.0, None, "value >= 20000"), None, True),
        (Figure("s", "f", "KB", 48.0, 38.0), 48.0 / 38.0, None),
        (Figure("s", "f", "ms", 9.0, 0.0, "ratio <= 4"), None, False),  # no baseline: not met
    ],
)
def test_a_figure_is_judged_against_its_target(
    figure: Figure, ratio: float | None, met: bool | None
) -> None:
    assert figure.ratio == pytest.approx(ratio) if ratio is not None else figure.ratio is None
    assert figure.met is met
    row = table([figure]).splitlines()[-1]
    assert {True: "yes", False: "MISSED", None: ""}[met] in row


def test_the_ingest_bench_runs_the_procfile_web_process_and_reports(tmp_path: Path) -> None:
    env = {**os.environ, "PARLEY_BENCH_OUT": str(tmp_path)}
    argv = ["--seconds", "1", "--clients", "1", "--threads", "2", "--conversations", "2"]
    subprocess.run(
        [sys.executable, "-m", "bench.ingest", *argv],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=240,
        capture_output=True,
    )
    doc = json.loads((tmp_path / "ingest.json").read_text())
    figure = doc["figures"][0]
    assert figure["scenario"] == "ingest" and figure["target"] == "ratio >= 0.4"
    assert figure["value"] > 0 and figure["baseline"] > 0
    assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"])
    assert doc["parley"]["errors"] == 0 and doc["bare"]["errors"] == 0
    assert doc["parley"]["ok"] > 0


def test_the_peer_bench_delivers_every_message_exactly_once_and_reports(tmp_path: Path) -> None:
    """Parley's side of bench.peer (no Synapse) at small N: every receiver got every message
    once, in each sender's order, and the JSON has a figure per scenario and metric."""
    env = {**os.environ, "PARLEY_BENCH_OUT": str(tmp_path)}
    argv = ["--messages", "6,8,3", "--group", "3", "--workers", "1"]
    subprocess.run(
        [sys.executable, "-m", "bench.peer", *argv],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    doc = json.loads((tmp_path / "peer.json").read_text())
    assert doc["exactly_once"] is True and doc["versions"] == {}
    run = doc["runs"]["parley"][0]
    assert set(run) == {"1to1", "8to1", "1to50"} and doc["runs"]["synapse"] == []
    for key, (messages, receivers) in {"1to1": (6, 1), "8to1": (8, 1), "1to50": (3, 3)}.items():
        result = run[key]
        assert result["exactly_once"] and result["problems"] == []
        assert (result["messages"], result["receivers"]) == (messages, receivers)
        assert result["deliveries"] == messages * receivers
        assert {"web", "worker", "beat", "redis"} == set(result["cpu_ms_per_message_by_process"])
    names = [f["name"] for f in doc["figures"]]
    assert len(names) == 13 and all(f["scenario"] == "peer" for f in doc["figures"])
    assert all(f["baseline"] is None and f["target"] == "" for f in doc["figures"])


def test_the_peer_bench_counts_the_postgresql_server_as_the_services_cpu(
    postgres_url: str,
) -> None:
    """With --postgres the database is a server of its own: the postmaster's tree, where a
    connection's backend runs, is one of the roots whose CPU the peer bench sums, and a query
    that burns CPU in the backend shows up there."""
    from sqlalchemy import create_engine, text

    from bench.peer_common import cpu_snapshot, cpu_used
    from bench.stack import postgres_server_pid

    roots = {"postgres": postgres_server_pid(postgres_url)}
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            before = cpu_snapshot(roots)
            conn.execute(text("SELECT count(*) FROM generate_series(1, 3000000)")).scalar_one()
            used = cpu_used(before, cpu_snapshot(roots))
    finally:
        engine.dispose()
    assert any(key[1] == backend for key in before)  # the backend is in the root's tree
    assert used["postgres"] > 0.05  # seconds: ~0.3 s of counting on the 2-core box


def test_the_timeline_bench_follows_each_message_through_every_stage(tmp_path: Path) -> None:
    """bench.timeline at small N: every message is followed from its POST through the
    verdict, the stream and the hub round to the socket, with the stages in order (none
    negative beyond the logs' millisecond)."""
    env = {**os.environ, "PARLEY_BENCH_OUT": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-m", "bench.timeline", "--messages", "12", "--rate", "10"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=240,
        capture_output=True,
    )
    doc = json.loads((tmp_path / "timeline.json").read_text())
    assert doc["sent"] == 12 and doc["followed"] >= 10
    p50 = {f["name"].removesuffix(" p50"): f["value"] for f in doc["figures"]}
    stages = ["POST", "to verdict", "to stream", "to hub round", "to socket"]
    assert set(p50) == {*stages, "hub round CPU", "total"}
    assert all(p50[s] >= -1.0 for s in stages)  # log lines and stream ids carry milliseconds
    assert p50["total"] > 0 and p50["hub round CPU"] > 0
    assert len(doc["app_post_ms"]) == 12 and all(ms > 0 for ms in doc["app_post_ms"])
