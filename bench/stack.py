"""What every service benchmark starts: a private Redis and data dir, and Parley's own processes
launched from the Procfile's command lines, so a benchmark measures what `make run` runs.

Baselines run under the same command lines with only the application swapped (a bare Flask
app for gunicorn, a bare Celery app for the worker): the ratio then isolates Parley's code.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> None:
    """`ulimit -n` up to the hard limit (10,000 sockets need more than the usual 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def procfile_argv(process: str, env: dict[str, str]) -> list[str]:
    """The Procfile's command for `process`, its ${VAR:-default}s filled from `env`, run with
    this interpreter (`python -m gunicorn`, `python -m celery`)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            expanded = _DEFAULTED.sub(lambda m: env.get(m.group(1)) or m.group(2), command)
            argv = shlex.split(expanded)
            return [sys.executable, "-m", *argv]
    raise KeyError(f"no {process!r} in the Procfile")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_json(port: int, method: str, path: str, body: Any = None, token: str = "") -> Any:
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


@dataclass
class Stack:
    """Every process this run started, stopped (process groups, newest first) on exit."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    secret: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    def token(self, user: str, ttl_s: int = 3600) -> str:
        import jwt

        claims = {"sub": user, "exp": int(time.time()) + ttl_s}
        return jwt.encode(claims, self.secret, algorithm="HS256")

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
                preexec_fn=raise_fd_limit,
                **kw,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    def web(
        self, name: str, app: str = "web.wsgi:app", connections: int = 30000, processes: int = 1
    ) -> tuple[int, int]:
        """The Procfile's web process (`processes` gevent workers) serving `app`: (port, the
        first worker's pid)."""
        port = free_port()
        env = {**self.env, "PORT": str(port), "WEB_CONCURRENCY": str(processes)}
        argv = procfile_argv("web", {**env, "WEB_CONNECTIONS": str(connections)})
        argv[-1] = app
        master = self.spawn(name, argv)

        def worker_pid() -> int | None:
            try:
                path = f"/proc/{master.pid}/task/{master.pid}/children"
                children = Path(path).read_text().split()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz" if app == "web.wsgi:app" else "/nowhere")
                conn.getresponse().read()
                conn.close()
            except (OSError, http.client.HTTPException):
                return None
            return int(children[0]) if children else None

        return port, int(wait_for(worker_pid, 60, f"{name} to serve"))

    def worker(
        self, name: str, concurrency: int, app: str = "worker", queues: str = "", solo: bool = False
    ) -> subprocess.Popen[bytes]:
        """The Procfile's Celery worker, with `app` (and its queues) swapped in for baselines;
        `solo`: one process running the tasks itself (`--pool solo`) instead of the prefork
        pool's `concurrency` children (docs/deploy.md)."""
        argv = procfile_argv("worker", {**self.env, "WORKER_CONCURRENCY": str(concurrency)})
        if solo:
            at = argv.index("--concurrency")
            argv[at : at + 2] = ["--pool", "solo"]
        argv[argv.index("-A") + 1] = app
        if queues:
            argv[argv.index("-Q") + 1] = queues
        hostname = argv.index("--hostname") + 1
        argv[hostname] = f"{name}-{secrets.token_hex(3)}@%h"
        return self.spawn(name, argv)


PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def _database(tmp: Path, postgres: bool) -> Iterator[str]:
    """SQLite in the data dir, or a fresh PostgreSQL database dropped at the end."""
    if not postgres:
        yield f"sqlite:///{tmp / 'parley.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"parley_bench_{secrets.token_hex(5)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_server_pid(database_url: str) -> int:
    """The pid of the local PostgreSQL server's postmaster behind `database_url`: its process
    tree (the backends serving a run, the WAL writer, the checkpointer) is the database's CPU,
    which a benchmark counts as the service's own (an embedded SQLite's is in-process)."""
    import psutil
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:  # the backend exits once its connection closes
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            return psutil.Process(backend).ppid()
    finally:
        engine.dispose()


@contextmanager
def services(keep: bool = False, postgres: bool = False) -> Iterator[Stack]:
    """A private redis-server and data dir, SQLite (or with `postgres` a fresh database on
    the local PostgreSQL), migrated; everything stopped and removed on exit."""
    raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    stack = Stack(tmp, secret=secrets.token_urlsafe(48))
    with _database(tmp, postgres) as database_url:
        try:
            yield from _started(stack, tmp, database_url)
        finally:
            stack.stop_all()
            if keep:
                print(f"logs kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)


def _started(stack: Stack, tmp: Path, database_url: str) -> Iterator[Stack]:
    server = RedisServer(tmp / "redis")
    server.start()
    assert server.proc is not None
    stack.procs.append(server.proc)  # the first started: stop_all() stops it last
    stack.env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "CELERY_"))},
        "REDIS_URL": server.url(),
        "CELERY_BROKER_URL": server.url(),
        "DATABASE_URL": database_url,
        "PARLEY_DATA_DIR": str(tmp),
        "PARLEY_JWT_SECRET": stack.secret,
        "PARLEY_RATE_LIMITS": "off",  # the benchmarks are one user posting flat out
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "web", "db", "upgrade"],
        cwd=ROOT,
        env=stack.env,
        check=True,
    )
    yield stack
