"""Real gunicorn web nodes and a small WebSocket client for the live-event tests.

A node is `gunicorn --worker-class gevent --workers 1 web.wsgi:app` started as a subprocess
with the stack's environment, so it shares the database and Redis of the in-process `api` app
and of the Celery worker. Tests talk to it over real TCP with `websocket-client`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

from tests.conftest import ROOT, Stack, free_port, wait_for


@dataclass
class WebNode:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    logfile: Path

    def ws_url(self, **params: str) -> str:
        query = urllib.parse.urlencode(params)
        return f"ws://127.0.0.1:{self.port}/v1/ws" + (f"?{query}" if query else "")

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP request to this node; (status, JSON body)."""
        headers = {"Content-Type": "application/json", **(extra_headers or {})}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith(b"{") else {}
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Stop the node: SIGINT (gunicorn's quick shutdown) unless a test wants SIGTERM's
        graceful one."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")


def start_node(stack: Stack, name: str, env: Mapping[str, str] | None = None) -> WebNode:
    """Start a gunicorn gevent node on a free port and wait until it answers /healthz."""
    port = free_port()
    logfile = stack.data_dir / f"gunicorn-{name}-{port}.log"
    with logfile.open("ab") as out:
        proc = _spawn_gunicorn(port, {**stack.env, **(env or {})}, out)
    node = WebNode(name, port, proc, logfile)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn {name} exited:\n{node.log()[-3000:]}")
        try:
            return node.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    wait_for(healthy, 60, 0.1, f"gunicorn node {name} to answer /healthz")
    return node


def _spawn_gunicorn(port: int, env: Mapping[str, str], out: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gevent",
            "--workers",
            "1",
            "--worker-connections",
            "2000",
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "10",
            "--no-control-socket",
            "web.wsgi:app",
        ],
        cwd=ROOT,
        env=dict(env),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@contextmanager
def running_node(
    stack: Stack, name: str, env: Mapping[str, str] | None = None
) -> Iterator[WebNode]:
    node = start_node(stack, name, env)
    try:
        yield node
    finally:
        node.stop()


# --- client -----------------------------------------------------------------------------------


@dataclass
class Closed:
    code: int
    reason: str


@dataclass
class LiveClient:
    """A websocket-client connection that decodes frames and remembers what it received."""

    ws: websocket.WebSocket
    received: list[dict[str, Any]] = field(default_factory=list)
    closed: Closed | None = None

    @classmethod
    def connect(cls, url: str, timeout: float = 10, **options: Any) -> LiveClient:
        return cls(websocket.create_connection(url, timeout=timeout, **options))

    def send(self, frame: Any) -> None:
        self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    def send_binary(self, data: bytes) -> None:
        self.ws.send_binary(data)

    def next(self, timeout: float = 10) -> dict[str, Any] | Closed:
        """The next text frame (answering pings meanwhile), or Closed with the server's code."""
        if self.closed is not None:
            return self.closed
        self.ws.settimeout(timeout)
        opcode, frame = self.ws.recv_data_frame(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data or b""
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            self.closed = Closed(code, data[2:].decode(errors="replace"))
            return self.closed
        msg: dict[str, Any] = json.loads(frame.data if opcode != 2 else b"{}")
        self.received.append(msg)
        return msg

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20, what: str = "frame"
    ) -> dict[str, Any]:
        """Read until a frame matches (frames read on the way stay in `received`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout}s; got {self.received[-5:]}")
            try:
                msg = self.next(left)
            except websocket.WebSocketTimeoutException:
                continue
            if isinstance(msg, Closed):
                raise AssertionError(f"closed {msg} while waiting for {what}")
            if predicate(msg):
                return msg

    def wait_type(self, etype: str, timeout: float = 20) -> dict[str, Any]:
        return self.wait(lambda m: m.get("type") == etype, timeout, etype)

    def wait_closed(self, timeout: float = 20) -> Closed:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"socket still open after {timeout}s")
            try:
                msg = self.next(left)
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, OSError) as exc:
                raise AssertionError(f"connection dropped without a close frame: {exc}") from exc
            if isinstance(msg, Closed):
                return msg

    def messages(self, etype: str = "message.new") -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == etype]

    def close(self) -> None:
        try:
            with suppress(OSError, websocket.WebSocketException):
                self.ws.close(timeout=1)
        finally:
            self.ws.shutdown()  # closes the socket even when the close handshake failed


def small_receive_buffer(size: int = 4096) -> tuple[tuple[int, int, int], ...]:
    """Socket options for a client whose kernel buffer fills fast (a slow reader)."""
    return ((socket.SOL_SOCKET, socket.SO_RCVBUF, size),)


# --- the protocol document --------------------------------------------------------------------

DOCUMENT_URI = "urn:parley:asyncapi"


class FrameCheck:
    """Checks frames a server sent against its AsyncAPI document (`/asyncapi.json`): the frame
    must be a message of one of the document's `send` operations and match that message's
    payload schema (JSON Schema draft 7, the base of AsyncAPI's schema format)."""

    def __init__(self, document: dict[str, Any]) -> None:
        registry: Registry[Any] = Registry().with_resource(
            DOCUMENT_URI, DRAFT7.create_resource(document)
        )
        self.by_type: dict[str, Draft7Validator] = {}
        for op in document["operations"].values():
            if op["action"] != "send":
                continue
            for ref in op["messages"]:  # → the channel's message → the component
                pointer = resolve(document, ref["$ref"])["$ref"]
                payload = resolve(document, pointer)["payload"]
                self.by_type[payload["properties"]["type"]["const"]] = Draft7Validator(
                    {"$ref": f"{DOCUMENT_URI}{pointer}/payload"}, registry=registry
                )

    def problems(self, frame: dict[str, Any]) -> list[str]:
        validator = self.by_type.get(str(frame.get("type")))
        if validator is None:
            return [f"frame type {frame.get('type')!r} is not described: {frame}"]
        return [
            f"{frame.get('type')} at {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}"
            for e in validator.iter_errors(frame)
        ]


def resolve(document: dict[str, Any], pointer: str) -> Any:
    """A local JSON pointer ("#/a/b") resolved in `document`."""
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
