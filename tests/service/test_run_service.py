"""`make run` end to end: scripts/run.py brings the whole service up and takes all of it down.

No mocks: the real launcher starts the embedded Redis, migrates, runs web, worker and beat from
the Procfile, and must answer /readyz; then SIGTERM must stop everything with exit code 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from core.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30
TASK_SUCCEEDED = re.compile(r"Task [\w.]+\[[0-9a-f-]+\] succeeded")


def _venv_python() -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: with the pid it names one process even if pids are reused.

    None when the process is gone or a zombie (dead, only waiting to be reaped).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X") else start


def _descendants(pid: int) -> dict[int, str]:
    """Every live descendant of pid (pid → start time), walking /proc/<pid>/task/*/children."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in map(int, (task / "children").read_text().split()):
                    start = _start_time(child)
                    if start is not None and child not in found:
                        found[child] = start
                        todo.append(child)
    return found


def _still_alive(processes: dict[int, str]) -> list[int]:
    return [pid for pid, start in processes.items() if _start_time(pid) == start]


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()[:200]
    return "?"


def _processes_mentioning(data_dir: Path, port: int) -> list[str]:
    """Live processes whose command line or environment names our data dir or port."""
    needles = [str(data_dir).encode()]
    port_pattern = re.compile(rf":{port}\b".encode())
    hits = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid() or _start_time(int(proc.name)) is None:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            environ = b""
        if any(n in cmdline or n in environ for n in needles) or port_pattern.search(cmdline):
            hits.append(f"{proc.name}: {cmdline.decode(errors='replace')[:200]}")
    return hits


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback URL)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return None


def _kill_leftovers(processes: dict[int, str]) -> None:
    """Test hygiene only: a failing run must not leave its children behind for the next test."""
    for pid in _still_alive(processes):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _newcomer_env(data_dir: Path, port: int) -> dict[str, str]:
    """`make run` as a newcomer starts it: no REDIS_URL, no secrets, SQLite in the data dir."""
    env = dict(os.environ)
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        PARLEY_DATA_DIR=str(data_dir),
        # Unset, as for a newcomer: the service generates a local secret in the data dir.
        PARLEY_JWT_SECRET="",
        # Empty, not absent: a developer's .env must not point this run at their own Redis/DB.
        REDIS_URL="",
        CELERY_BROKER_URL="",
        DATABASE_URL=f"sqlite:///{data_dir / 'parley.db'}",
        PYTHONUNBUFFERED="1",
        # Beat's outbox sweep every second: soon a task goes beat → Redis → worker and back.
        PARLEY_OUTBOX_SWEEP_S="1",
    )
    return env


def _launch(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """scripts/run.py in its own session, stdout and stderr to log_path."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [_venv_python(), "scripts/run.py"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_make_run_serves_readyz_then_sigterm_stops_every_process_with_exit_0(
    tmp_path: Path,
) -> None:
    """With REDIS_URL unset, run.py starts an embedded Redis, migrates and runs web + worker +
    beat until /readyz is 200; SIGTERM then stops all of it, exit code 0, no process left."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = _newcomer_env(data_dir, port)
    log_path = tmp_path / "run.log"
    launcher = _launch(env, log_path)
    seen = {launcher.pid: _start_time(launcher.pid) or ""}
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = None
        while time.monotonic() < deadline and launcher.poll() is None:
            seen.update(_descendants(launcher.pid))
            status = _get_status(f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                break
            time.sleep(0.5)
        output = log_path.read_text(errors="replace")
        assert status == 200, (
            f"/readyz never answered 200 (last: {status}, launcher exit: {launcher.poll()})\n"
            + output[-6000:]
        )

        assert f"Parley on http://127.0.0.1:{port} (data: {data_dir}, redis: embedded)" in output
        match = re.search(r"starting embedded Redis on (redis://127\.0\.0\.1:\d+/0)", output)
        assert match, output[-3000:]
        embedded = redis.Redis.from_url(match.group(1), socket_timeout=2)
        try:
            assert embedded.ping()
        finally:
            embedded.close()

        # Ready is not enough: the worker must run what beat schedules (imports work in the
        # pool processes, the app context builds), and nothing may crash on the way.
        while (
            time.monotonic() < deadline
            and not TASK_SUCCEEDED.search(output)
            and "Traceback" not in output
        ):
            time.sleep(0.5)
            output = log_path.read_text(errors="replace")
        assert TASK_SUCCEEDED.search(output), "no task succeeded\n" + output[-6000:]
        assert "Traceback" not in output, output[-6000:]

        seen.update(_descendants(launcher.pid))
        assert len(seen) >= 5, f"expected launcher, redis, web, worker, beat; saw {seen}"
        _newcomer_walkthrough(env, port, data_dir)

        launcher.send_signal(signal.SIGTERM)
        returncode = launcher.wait(STOP_TIMEOUT_S)
        output = log_path.read_text(errors="replace")
        assert returncode == 0, output[-4000:]

        leftovers = {pid: _cmdline(pid) for pid in _still_alive(seen)}
        assert leftovers == {}, output[-4000:]
        assert _processes_mentioning(data_dir, port) == []
        assert _get_status(f"http://127.0.0.1:{port}/readyz") is None
        # Redis persisted its append-only file under the data dir before it stopped.
        assert (data_dir / "redis" / "appendonly.aof").exists()
        assert not (data_dir / "redis.url").exists()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        _kill_leftovers(seen)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_during_start_up_exits_0_and_a_second_run_on_the_data_dir_is_refused(
    tmp_path: Path,
) -> None:
    """The migration waits on a SQLite write lock this test holds. Meanwhile a second run.py on
    the same data dir exits 1 and says why (two Redis servers on one append-only file corrupt
    it). SIGTERM to the first: once the migration ends it stops, exit code 0, before anything
    served; its Redis is stopped and no longer announced, and no process is left."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = _newcomer_env(data_dir, free_port())
    blocker = sqlite3.connect(data_dir / "parley.db", isolation_level=None)
    blocker.execute("PRAGMA journal_mode=WAL")
    blocker.execute("BEGIN IMMEDIATE")
    log_path = tmp_path / "first.log"
    first = _launch(env, log_path)
    seen = {first.pid: _start_time(first.pid) or ""}
    try:
        deadline = time.monotonic() + 60
        while "migrating the database" not in log_path.read_text() and first.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        seen.update(_descendants(first.pid))
        second = subprocess.run(
            [_venv_python(), "scripts/run.py"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"Another Parley is already running with data dir {data_dir}" in second.stderr
        assert "embedded Redis" not in second.stdout

        seen.update(_descendants(first.pid))
        assert first.poll() is None, log_path.read_text()
        first.send_signal(signal.SIGTERM)
        blocker.execute("ROLLBACK")
        assert first.wait(STOP_TIMEOUT_S) == 0, log_path.read_text()
        output = log_path.read_text()
        assert "stopped on SIGTERM before the service was up" in output
        assert "Parley on" not in output
        assert not (data_dir / "redis.url").exists()
        assert len(seen) >= 2, f"expected the launcher and its Redis; saw {seen}"
        assert {pid: _cmdline(pid) for pid in _still_alive(seen)} == {}
    finally:
        blocker.close()
        if first.poll() is None:
            first.kill()
            first.wait()
        _kill_leftovers(seen)


def _newcomer_walkthrough(env: dict[str, str], port: int, data_dir: Path) -> None:
    """The README's steps: tokens from the CLI in a second terminal (no REDIS_URL there: the
    embedded Redis announced itself in the data dir), then conversation, message, read back."""
    cli_env = {k: v for k, v in env.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    assert (data_dir / "redis.url").read_text().startswith("redis://127.0.0.1:")

    def token(user: str) -> str:
        out = subprocess.run(
            [_venv_python(), "-m", "flask", "--app", "web", "token", "issue", user],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    alice, bob = token("alice"), token("bob")
    base = f"http://127.0.0.1:{port}"

    def call(method: str, path: str, tok: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 (loopback http only)
            base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read())

    status, conv = call("POST", "/v1/conversations", alice, {"type": "direct", "members": ["bob"]})
    assert status == 201
    status, msg = call(
        "POST",
        f"/v1/conversations/{conv['id']}/messages",
        alice,
        {"text": "Hi Bob, is Saturday fine?", "client_msg_id": "readme-1"},
    )
    assert status == 202 and msg["state"] == "pending"
    deadline = time.monotonic() + 30
    items: list[dict] = []
    while time.monotonic() < deadline and not items:
        items = call("GET", f"/v1/conversations/{conv['id']}/messages", bob)[1]["items"]
        time.sleep(0.2)
    assert [(m["text"], m["state"]) for m in items] == [("Hi Bob, is Saturday fine?", "delivered")]
