"""Parley's side of the peer benchmark: the Procfile's web, worker and beat on a private Redis
(bench/stack.py), users by JWT, messages POSTed over keep-alive connections, and each receiver
a WebSocket on which a `message.new` frame is the receipt."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import requests

from bench.peer_common import Inbox, Scenario, Setup, listening, text
from bench.stack import Stack, http_json, postgres_server_pid, procfile_argv, services


class ParleySide:
    name = "Parley"

    def __init__(self, stack: Stack, port: int, roots: dict[str, int]) -> None:
        self.stack, self.port, self.roots = stack, port, roots
        self.version = "this tree"

    def prepare(self, sc: Scenario, tag: str) -> Setup:
        senders = [f"{tag}-s{k}" for k in range(sc.senders)]
        receivers = [f"{tag}-r{j}" for j in range(sc.receivers)]
        tokens = {user: self.stack.token(user) for user in senders + receivers}
        if sc.receivers == 1:  # a direct conversation per sender with the receiver
            rooms = [self._conversation("direct", s, receivers, tokens) for s in senders]
        else:  # one group: the first sender creates it with everyone else
            others = senders[1:] + receivers
            rooms = [self._conversation("group", senders[0], others, tokens)] * sc.senders
        readers = [partial(_read, self._socket(tokens[user])) for user in receivers]
        inboxes, close = listening(readers, 5)
        posters = [
            _poster(self.port, cid, tokens[s]) for s, cid in zip(senders, rooms, strict=True)
        ]
        return Setup(posters, inboxes, close)

    def _conversation(self, kind: str, owner: str, members: list[str], tokens: dict) -> str:
        body = {"type": kind, "members": members}
        return str(http_json(self.port, "POST", "/v1/conversations", body, tokens[owner])["id"])

    def _socket(self, token: str) -> Any:
        """A receiver's socket, registered with the hub (answered a ping) before it counts."""
        import websocket

        url = f"ws://127.0.0.1:{self.port}/v1/ws?token={token}"
        # websocket-client's UTF-8 check is pure Python, byte by byte: skipped, as in bench/ws.py
        ws = websocket.create_connection(url, timeout=1, skip_utf8_validation=True)
        ws.send('{"type":"ping"}')
        deadline = time.monotonic() + 10
        while '"pong"' not in ws.recv():
            if time.monotonic() > deadline:
                raise RuntimeError("no pong on a fresh socket")
        return ws


def _read(ws: Any, inbox: Inbox, stop: threading.Event) -> None:
    """One receiver's WebSocket: every `message.new` frame is a receipt."""
    import websocket

    try:
        while not stop.is_set():
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError) as exc:
                if not stop.is_set():
                    inbox.problem(f"socket closed: {exc!r}")
                return
            at = time.perf_counter()
            if raw.startswith('{"type":"message.new"'):
                inbox.add(json.loads(raw)["data"]["id"], at)
            elif raw.startswith('{"type":"resync"'):
                inbox.problem("resync: the socket fell behind its stream")
    finally:
        ws.close()


def _poster(port: int, cid: str, token: str) -> Callable[[int], str]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{port}/v1/conversations/{cid}/messages"

    def post(i: int) -> str:
        resp = session.post(url, json={"text": text(i)}, timeout=60)
        if resp.status_code != 202:
            raise RuntimeError(f"POST: {resp.status_code} {resp.text[:200]}")
        return str(resp.json()["id"])

    return post


@contextmanager
def parley(
    keep: bool, postgres: bool, workers: int, pace_ms: float = 0, solo: bool = False
) -> Iterator[ParleySide]:
    """Parley as `make run` runs it (web, worker, beat) with its private redis-server;
    `pace_ms` > 0 turns ingest pacing on (PARLEY_INGEST_PACE_LAG_MS); `solo`: the worker is
    one `--pool solo` process instead of `workers` prefork children."""
    with services(keep, postgres) as stack:
        if pace_ms > 0:
            stack.env["PARLEY_INGEST_PACE_LAG_MS"] = str(pace_ms)
        redis_pid = stack.procs[0].pid
        port, _ = stack.web("web")
        web_master = stack.procs[-1]  # the gunicorn master: its worker is its child
        worker = stack.worker("worker", workers, solo=solo)
        beat = stack.spawn("beat", procfile_argv("beat", stack.env))
        roots = {"web": web_master.pid, "worker": worker.pid, "beat": beat.pid}
        roots["redis"] = redis_pid
        if postgres:  # SQLite runs inside web and worker; PostgreSQL is a server of its own
            roots["postgres"] = postgres_server_pid(stack.env["DATABASE_URL"])
        yield ParleySide(stack, port, roots)
