"""Real services for the suite: a private Redis server, SQLite and PostgreSQL, a Celery worker.

Nothing of ours is mocked. PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are used
where they answer; where not, the tests that need them are skipped and the summary at the end of
the run says so in plain words.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from core.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/postgres"
SERVICES: dict[str, str] = {}
JWT_SECRET = "test-secret-0123456789abcdef-0123456789"
# The suite's moderation policy: defaults, plus hold/reject outcomes to test them end to end.
POLICIES = '{"support": {"email": "hold", "url": "reject"}}'

sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("services used by this run")
    for name in ("redis", "postgresql", "rabbitmq", "celery worker"):
        terminalreporter.write_line(
            f"{name:>14}: {SERVICES.get(name, 'not needed by the tests run')}"
        )


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis server, nothing persisted: tests may FLUSHALL or restart it without
    touching anyone else's."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        version = server.client().info("server")["redis_version"]
        SERVICES["redis"] = (
            f"private redis-server {version} on port {server.port} ({server.binary})"
        )
        yield server


# --- databases --------------------------------------------------------------------------------


def _postgres_problem() -> str | None:
    if not port_open(PG_HOST, PG_PORT):
        return f"nothing listens on {PG_HOST}:{PG_PORT}"
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"cannot connect as postgres: {exc}"
    return None


def fresh_postgres(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database (skipped, and said so, where there is no server), dropped
    when the generator closes: the body of every PostgreSQL fixture."""
    from sqlalchemy import create_engine, text

    problem = _postgres_problem()
    if problem:
        SERVICES["postgresql"] = f"SKIPPED — {problem}; PostgreSQL variants did not run"
        pytest.skip(f"PostgreSQL unavailable: {problem}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        version = conn.execute(text("SHOW server_version")).scalar()
    SERVICES.setdefault(
        "postgresql", f"PostgreSQL {version} at {PG_HOST}:{PG_PORT} (database {name})"
    )
    yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this run, dropped at the end."""
    yield from fresh_postgres("parley_test")


@pytest.fixture(scope="module")
def module_postgres() -> Iterator[str]:
    """A PostgreSQL database for one test module alone, dropped after it. A module whose stack
    runs its own worker (and its own Redis db) needs it: a worker's moderation batch takes
    whatever waits in its database, so sharing the session database with another stack's
    worker would let that worker deliver this module's messages to the other Redis."""
    yield from fresh_postgres("parley_module")


# --- the stack: app + worker per database -----------------------------------------------------


@dataclass
class Worker:
    env: dict[str, str]
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    _out: Any = None

    def start(self, app: Flask, concurrency: int = 2) -> None:
        self._out = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "--loglevel=INFO",
                "-Q",
                "pipeline,media,push,maintenance",
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"test-{uuid.uuid4().hex[:6]}@%h",
                "--without-mingle",
                "--without-gossip",
                *self.extra_args,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        producer = app.extensions["parley"].tasks
        wait_for(lambda: producer.control.ping(timeout=0.5), 60, 0.2, "the Celery worker")

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        self._out.close()

    def children(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")


@dataclass
class Stack:
    name: str
    app: Flask
    env: dict[str, str]
    redis: redis.Redis
    data_dir: Path
    worker: Worker

    @property
    def svc(self) -> Any:
        return self.app.extensions["parley"]


def _make_stack(
    name: str,
    database_url: str,
    redis_db: int,
    redis_server: RedisServer,
    data_dir: Path,
    broker_url: str | None = None,
) -> Stack:
    from models.migrate import upgrade
    from web import create_app

    upgrade(database_url)
    redis_url = redis_server.url(redis_db)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "CELERY_"))},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url or redis_url,
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_JWT_SECRET": JWT_SECRET,
        "PARLEY_OUTBOX_STALE_S": "2",
        "PARLEY_MODERATION_POLICIES": POLICIES,
        "PARLEY_OUTBOX_SWEEP_S": "1",
        "PYTHONPATH": str(ROOT),
    }
    app = create_app(
        {
            "database_url": database_url,
            "redis_url": redis_url,
            "broker_url": broker_url or redis_url,
            "data_dir": data_dir,
            "jwt_secret": JWT_SECRET,
            "testing": True,
            "outbox_stale_s": 2.0,
            "moderation_policies": POLICIES,
        }
    )
    worker = Worker(env, data_dir / "worker.log")
    return Stack(name, app, env, redis_server.client(redis_db), data_dir, worker)


def stack_on(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    redis_dbs: tuple[int, int],
    name: str = "",
) -> Stack:
    """A stack on the database `request.param` names ("sqlite" or "postgres"), with its own
    data dir and Redis db (`redis_dbs`: the SQLite one, the PostgreSQL one). A named stack
    (a module's own) gets its own PostgreSQL database too (`module_postgres`)."""
    prefix = f"{name}-" if name else ""
    data_dir = tmp_path_factory.mktemp(f"{prefix or 'data-'}{request.param}")
    if request.param == "sqlite":
        url, db = f"sqlite:///{data_dir / 'parley.db'}", redis_dbs[0]
    else:
        database = "module_postgres" if name else "postgres_url"
        url, db = request.getfixturevalue(database), redis_dbs[1]
    return _make_stack(f"{prefix}{request.param}", url, db, redis_server, data_dir)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The app on SQLite and on PostgreSQL (each with its own Redis db and data dir)."""
    st = stack_on(request, redis_server, tmp_path_factory, redis_dbs=(1, 2))
    yield st
    st.worker.stop()
    st.svc.engine.dispose()


@pytest.fixture
def live(stack: Stack) -> Stack:
    """The stack with a running Celery worker (started once, kept for the session)."""
    if stack.worker.proc is None or stack.worker.proc.poll() is not None:
        stack.worker.start(stack.app)
        SERVICES["celery worker"] = "real `celery -A worker worker` subprocess(es)"
    return stack


@pytest.fixture
def idle(stack: Stack) -> Stack:
    """The stack with no worker running: posted messages stay pending (the pipeline is paused)."""
    stack.worker.stop()
    return stack


@pytest.fixture
def api(stack: Stack) -> Any:
    from tests.factories import Api

    return Api(stack)
