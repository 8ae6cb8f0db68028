"""The hub's fan-out path without a stack: wake-ups that carry their entries, the fall-back
reads, and the frames written without wsproto. The end-to-end behaviour is in test_ws.py."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from web.live import dispatch
from web.live.connection import _without_extensions, text_frame
from web.live.hub import Hub
from web.live.render import Outgoing, Viewer
from web.live.settings import LiveSettings
from web.live.streams import Entry, parse_wake

DATA = '{"conversation_id":"c1","message_id":"m1","seq":1}'


def wake(users: dict[str, tuple[str, str]], data: str = DATA) -> dict[str, Any]:
    """A wake-up as core/events.py's script publishes it (through JSON, as the hub gets it)."""
    payload: dict[str, Any] = {"": {"type": "message.new", "data": data}}
    payload.update({u: list(ids) for u, ids in users.items()})
    decoded: dict[str, Any] = json.loads(json.dumps(payload))
    return decoded


class FakeConn:
    def __init__(self, user: str, cursor: tuple[int, int]) -> None:
        self.user_id = user
        self.roles: frozenset[str] = frozenset()
        self.cursor = cursor
        self.closing: int | None = None
        self.catching_up = False
        self.dirty = False
        self.got: list[str] = []

    def offer(self, frame: str, delivered: Any = None) -> bool:
        self.got.append(frame)
        return True


class Harness:
    """A hub whose stream reads and renders are recorded instead of done."""

    def __init__(self) -> None:
        svc = SimpleNamespace(
            settings=SimpleNamespace(redis_url="redis://127.0.0.1:1/0"), ReadSession=None
        )
        self.hub = Hub(svc, LiveSettings())  # type: ignore[arg-type]
        self.reads: list[dict[str, tuple[int, int]]] = []
        self.stream: dict[str, list[Entry]] = {}

        def read_many(starts: dict[str, tuple[int, int]], count: int) -> dict[str, list[Entry]]:
            self.reads.append(dict(starts))
            out = {u: [e for e in self.stream.get(u, []) if e.sid > s] for u, s in starts.items()}
            return {u: es for u, es in out.items() if es}

        def render(wants: dict[Viewer, list[Entry]]) -> dict[Viewer, list[Outgoing]]:
            return {v: [Outgoing(e.sid, e.id) for e in es] for v, es in wants.items()}

        self.hub.streams.read_many = read_many  # type: ignore[method-assign]
        self.hub.render = render  # type: ignore[method-assign]

    def add(self, user: str, cursor: tuple[int, int]) -> FakeConn:
        conn = FakeConn(user, cursor)
        self.hub.by_user.setdefault(user, set()).add(conn)  # type: ignore[arg-type]
        return conn

    def append(self, user: str, eid: str) -> str:
        """An entry in the (fake) stream; returns the id before it."""
        entries = self.stream.setdefault(user, [])
        prev = entries[-1].id if entries else "0-0"
        ms, seq = eid.split("-")
        entries.append(Entry((int(ms), int(seq)), eid, "message.new", json.loads(DATA)))
        return prev

    def dispatch(self) -> None:
        users = list(self.hub.dispatcher.pending)
        self.hub.dispatcher.pending.clear()
        self.hub.dispatcher.deliver(users)


def test_a_socket_at_the_previous_id_gets_the_entry_from_the_wake_up_without_a_read() -> None:
    h = Harness()
    prev = h.append("u1", "100-0")
    a = h.add("u1", (0, 0))
    h.hub.dispatcher.wake_with_entries(wake({"u1": (prev, "100-0")}))
    h.dispatch()
    assert a.got == ["100-0"] and a.cursor == (100, 0)
    assert h.reads == []


def test_wake_ups_before_the_dispatch_chain_in_order_and_still_need_no_read() -> None:
    h = Harness()
    a = h.add("u1", (0, 0))
    for eid in ("100-0", "100-1", "250-0"):
        prev = h.append("u1", eid)
        h.hub.dispatcher.wake_with_entries(wake({"u1": (prev, eid)}))
    h.dispatch()
    assert a.got == ["100-0", "100-1", "250-0"]
    assert h.reads == []


def test_a_socket_behind_the_previous_id_reads_its_gap() -> None:
    h = Harness()
    h.append("u1", "100-0")  # its wake-up never reached this node
    prev = h.append("u1", "200-0")
    a = h.add("u1", (0, 0))
    h.hub.dispatcher.wake_with_entries(wake({"u1": (prev, "200-0")}))
    h.dispatch()
    assert a.got == ["100-0", "200-0"]
    assert h.reads == [{"u1": (0, 0)}]


def test_a_user_with_one_socket_behind_reads_once_for_all_and_nothing_is_sent_twice() -> None:
    h = Harness()
    h.append("u1", "100-0")
    prev = h.append("u1", "200-0")
    ahead, behind = h.add("u1", (100, 0)), h.add("u1", (0, 0))
    h.hub.dispatcher.wake_with_entries(wake({"u1": (prev, "200-0")}))
    h.dispatch()
    assert ahead.got == ["200-0"]
    assert behind.got == ["100-0", "200-0"]
    assert h.reads == [{"u1": (0, 0)}]


def test_a_broken_chain_or_a_wake_up_without_ids_falls_back_to_a_read() -> None:
    h = Harness()
    a = h.add("u1", (0, 0))
    prev = h.append("u1", "100-0")
    h.hub.dispatcher.wake_with_entries(wake({"u1": (prev, "100-0")}))
    h.append("u1", "150-0")
    h.hub.dispatcher.wake_users(["u1"])  # an older publisher: ids only
    prev = h.append("u1", "200-0")
    h.hub.dispatcher.wake_with_entries(wake({"u1": (prev, "200-0")}))
    h.dispatch()
    assert a.got == ["100-0", "150-0", "200-0"]
    assert h.reads == [{"u1": (0, 0)}]

    b = h.add("u2", (0, 0))
    h.append("u2", "300-0")
    h.hub.dispatcher.wake_with_entries(wake({"u2": ("0-0", "300-0")}))
    h.append("u2", "350-0")  # its wake-up was lost: the next one does not chain
    prev = h.append("u2", "400-0")
    h.hub.dispatcher.wake_with_entries(wake({"u2": (prev, "400-0")}))
    h.dispatch()
    assert b.got == ["300-0", "350-0", "400-0"]
    assert h.reads[-1] == {"u2": (0, 0)}


def test_sockets_replaying_their_backlog_are_left_to_their_replay() -> None:
    h = Harness()
    prev = h.append("u1", "100-0")
    a = h.add("u1", (0, 0))
    a.catching_up = True
    h.hub.dispatcher.wake_with_entries(wake({"u1": (prev, "100-0")}))
    h.dispatch()
    assert a.got == [] and a.dirty
    assert h.hub.dispatcher.known == {}


def test_users_without_a_local_socket_or_a_usable_pair_are_not_taken_from_the_wake_up() -> None:
    payload = wake({"u1": ("0-0", "100-0"), "u2": ("0-0", "100-0"), "u3": ("100-0", "100-0")})
    payload["u4"] = ["x", "100-0"]
    payload["u5"] = [0, "100-0"]  # not strings: left out like a malformed id
    payload["u6"] = [None, None]
    payload["u7"] = ["0-0"]
    found = parse_wake(payload, {"u1", "u3", "u4", "u5", "u6", "u7"})
    assert list(found) == ["u1"]
    prev, entry = found["u1"]
    assert prev == (0, 0) and entry.sid == (100, 0) and entry.data["message_id"] == "m1"
    h = Harness()
    h.add("u4", (0, 0))
    h.hub.dispatcher.wake_with_entries(payload)
    assert h.hub.dispatcher.pending == {"u4"} and h.hub.dispatcher.known == {}  # woken to read


def test_users_woken_with_the_same_ids_share_one_entry_and_one_encoded_frame() -> None:
    """A fan-out's entries mostly share their id: each distinct id is parsed once and makes
    one entry, and a frame handed to several sockets is encoded once."""
    found = parse_wake(
        wake({"u1": ("50-0", "100-0"), "u2": ("50-0", "100-0"), "u3": ("70-0", "100-1")}),
        {"u1", "u2", "u3"},
    )
    assert found["u1"][1] is found["u2"][1] and found["u1"][0] == (50, 0)
    assert found["u3"] == ((70, 0), Entry((100, 1), "100-1", "message.new", found["u3"][1].data))
    frame = '{"type":"message.new","id":"100-0","data":{}}'
    first = text_frame(frame)
    assert text_frame(frame) is first
    assert text_frame(frame + " ") != first and text_frame(frame) == first


def test_a_wake_up_waits_for_its_round_as_text_unless_too_many_are_waiting() -> None:
    """Wake-ups are parsed by the dispatch round (their entries are never alive while the
    collector runs), in arrival order; when rounds do not come (stuck on Redis or the
    database) the text stops piling up and wake-ups are parsed on arrival."""
    h = Harness()
    d = h.hub.dispatcher
    a = h.add("u1", (0, 0))
    chain = [("0-0", "100-0"), ("100-0", "200-0"), ("200-0", "300-0")]
    for prev, eid in chain:
        msg = {"channel": b"parley:wake", "data": json.dumps(wake({"u1": (prev, eid)}))}
        d.on_message(msg)
    assert d.pending == set() and d.known == {} and len(d._wakes) == 3
    d._take_wakes()
    assert d._wakes == [] and d.pending == {"u1"}
    assert [e.id for e in d.known["u1"][1]] == ["100-0", "200-0", "300-0"]  # chained in order
    h.dispatch()
    assert a.got == ["100-0", "200-0", "300-0"] and h.reads == []
    for n in range(dispatch.UNPARSED_MAX):
        assert len(d._wakes) == n and d.pending == set()  # no round: the texts wait
        prev = "300-0" if n == 0 else f"{399 + n}-0"
        wakes = wake({"u1": (prev, f"{400 + n}-0")})
        d.on_message({"channel": "parley:wake", "data": json.dumps(wakes)})
    assert d._wakes == [] and d.pending == {"u1"}  # the last one parsed them all


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frames_are_the_bytes_wsproto_would_send(n: int) -> None:
    server = _server(deflate=False)
    frame = "é" * (n // 2) + "x" * (n % 2)
    assert text_frame(frame) == server.send(TextMessage(data=frame))


def test_a_connection_with_permessage_deflate_is_not_written_directly() -> None:
    assert _without_extensions(SimpleNamespace(ws=_server(deflate=False)))  # type: ignore[arg-type]
    assert not _without_extensions(SimpleNamespace(ws=_server(deflate=True)))  # type: ignore[arg-type]


def _server(deflate: bool) -> WSConnection:
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    extensions = [PerMessageDeflate()] if deflate else []
    server.receive_data(client.send(Request(host="x", target="/", extensions=extensions)))
    for event in server.events():
        if isinstance(event, Request):
            server.send(AcceptConnection(extensions=[PerMessageDeflate()]))
    return server
