"""Where a socket connected without `since` starts: at the moment its handshake completes.

docs/websocket.md promises that such a socket gets every event after the connection and none
before it. The position must therefore be fixed before the client can see the socket open: an
event appended between the handshake and the moment the server reads the stream position
would otherwise never be sent. Real gunicorn nodes (freshly started: a process's first socket
starts its hub, the widest window), a real Celery worker, real Redis, both databases.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from core.events import stream_key
from tests.conftest import Stack, wait_for
from tests.factories import Api, uid, wait_delivered
from tests.live_server import FrameCheck, LiveClient, WebNode, running_node

pytestmark = pytest.mark.slow

FRESH_NODES = 4  # a process's first socket starts its hub: the widest window
SOCKETS_PER_NODE = 5
AFTER_OPEN = 3  # events after the open each socket must get before it is judged
IN_FLIGHT = 50  # messages the poster keeps between POST and the streams


def _ms(event_id: str) -> int:
    return int(event_id.split("-")[0])


def _sid(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def _ids_after(live: Stack, user: str, after_ms: int, count: int) -> list[str]:
    """Up to `count` ids of the user's stream stamped after millisecond `after_ms`."""
    rows: Any = live.redis.xrange(stream_key(user), min=f"{after_ms + 1}-0", count=count)
    return [eid.decode() for eid, _ in rows]


class Poster(threading.Thread):
    """Posts to a conversation over REST, one message after another, until stopped, keeping
    IN_FLIGHT of them in the pipeline: at any moment messages are on their way to the streams
    (appended a few milliseconds apart), and the backlog stays short."""

    def __init__(self, api: Api, live: Stack, user: str, cid: str, watch: str) -> None:
        super().__init__(daemon=True)
        self.api, self.live, self.user, self.cid, self.watch = api, live, user, cid, watch
        self.stopped = threading.Event()
        self.failure: BaseException | None = None
        self.posted = 0
        self.last_seq = 0

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                self.last_seq = self.api.send(self.user, self.cid, f"line {self.posted}")["seq"]
                self.posted += 1
                while not self.stopped.is_set() and self.last_seq - self._delivered() > IN_FLIGHT:
                    time.sleep(0.005)
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def drain(self) -> None:
        """Wait until the pipeline has fanned out everything posted (the next test's messages
        would otherwise queue behind these)."""
        wait_for(lambda: self._delivered() >= self.last_seq, 60, 0.05, "the pipeline to drain")

    def _delivered(self) -> int:
        """The seq of the last message fanned out to the watched member."""
        rows: Any = self.live.redis.xrevrange(stream_key(self.watch), count=10)
        for _, fields in rows:
            if fields[b"type"] == b"message.new":
                return int(json.loads(fields[b"data"])["seq"])
        return 0

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


@dataclass
class Opened:
    """A socket opened without since, and when: `before` the client began to connect and
    once it had `opened` (milliseconds of the host clock, which Redis stamps stream ids with)."""

    user: str
    client: LiveClient
    before: int
    opened: float


def _open(node: WebNode, user: str, token: str) -> Opened:
    before = math.floor(time.time() * 1000)
    client = LiveClient.connect(node.ws_url(token=token))
    return Opened(user, client, before, time.time() * 1000)


def _judge(live: Stack, o: Opened, check: FrameCheck) -> list[str]:
    """What an open socket got wrong while messages kept arriving.

    Every event stamped after the client saw the socket open must arrive (message.new, and
    the notifications of members who are offline); none stamped before the client started
    connecting may. The hub sends a stream in order, so once the socket has the AFTER_OPEN-th
    event after the open, any earlier one it lacks was skipped.
    """

    def after_open() -> list[str]:
        later = _ids_after(live, o.user, math.floor(o.opened), AFTER_OPEN)
        return later if len(later) == AFTER_OPEN else []

    due = wait_for(after_open, 30, 0.01, f"{AFTER_OPEN} events after the open")
    last = _sid(due[-1])
    o.client.wait(lambda m: "id" in m and _sid(m["id"]) >= last, 30, f"event {due[-1]}")
    got = [m["id"] for m in o.client.received if "id" in m]
    problems = [f"missed {i} (socket open at {o.opened:.1f} ms)" for i in due if i not in got]
    problems += [f"sent {i}, from before {o.before} ms" for i in got if _ms(i) < o.before]
    if len(got) != len(set(got)):
        problems.append(f"duplicates in {got}")
    return problems + [p for frame in o.client.received for p in check.problems(frame)]


def test_a_socket_without_since_gets_every_message_posted_once_it_is_open(
    api: Api, live: Stack
) -> None:
    """Messages are posted over REST back to back to a group while its members connect without
    since, 20 sockets across four freshly started web processes: every event appended after
    the client saw its socket open arrives, and nothing from before the connection does.
    (Before the position was fixed ahead of the handshake, runs lost events: whatever was
    appended while the hub started, or while a user new to the process was recorded, fell
    before the position read after it.)"""
    sender = uid()
    readers = [[uid() for _ in range(SOCKETS_PER_NODE)] for _ in range(FRESH_NODES)]
    cid = api.conversation(sender, *(r for node_readers in readers for r in node_readers))
    for reader in (r for node_readers in readers for r in node_readers):
        # no in-app notifications for members offline: hundreds of messages times twenty
        # members would keep the worker busy long after this test
        quiet = {"notification_level": "none"}
        assert api.patch(f"/v1/conversations/{cid}/me", user=reader, json=quiet).status_code == 200
    warm = api.send(sender, cid, "the pipeline is warm")["id"]
    wait_delivered(live, sender, [warm])
    poster = Poster(api, live, sender, cid, watch=sender)
    poster.start()
    problems: list[str] = []
    started = time.monotonic()
    try:
        for n, node_readers in enumerate(readers):
            with running_node(live, f"fresh-{n}") as node:
                check = FrameCheck(node.request("GET", "/asyncapi.json")[1])
                tokens = [api.token(r) for r in node_readers]
                # one after the other, each user new to this process; judged once all are open
                sockets = [_open(node, r, t) for r, t in zip(node_readers, tokens, strict=True)]
                try:
                    for i, o in enumerate(sockets):
                        problems += [f"node {n} socket {i}: {p}" for p in _judge(live, o, check)]
                finally:
                    for o in sockets:
                        o.client.close()
    finally:
        poster.stop()
        poster.drain()
    assert poster.failure is None, poster.failure
    took = time.monotonic() - started
    assert not problems, f"{len(problems)} problem(s) in {took:.0f}s:\n" + "\n".join(problems)


def test_first_frame_auth_starts_at_the_handshake_not_at_the_auth_frame(
    api: Api, live: Stack
) -> None:
    """A socket that authenticates with its first frame starts where it opened: a message
    appended after the open but before the auth frame arrives; one from before does not."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    old = api.send(a, cid, "before the connection")["id"]
    wait_delivered(live, b, [old])
    with running_node(live, "first-frame") as node:
        client = LiveClient.connect(node.ws_url())
        try:
            between = api.send(a, cid, "after the open, before the auth frame")["id"]
            wait_delivered(live, b, [between])
            client.send({"type": "auth", "token": api.token(b)})
            client.send({"type": "ping"})
            client.wait_type("pong")
            after = api.send(a, cid, "after the auth frame")["id"]
            client.wait(
                lambda _m: after in [m["data"]["id"] for m in client.messages()], 30, "after"
            )
            assert [m["data"]["id"] for m in client.messages()] == [between, after]
        finally:
            client.close()
