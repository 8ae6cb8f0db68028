"""`GET /v1/ws` end to end: real gunicorn gevent nodes, a real Celery worker, real Redis, both
databases, and the real `websocket-client` on the other side of a TCP socket.

Nothing of ours is mocked and nothing waits a fixed time: every wait polls with a timeout.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from core.events import stream_key
from models import Message
from tests.conftest import Stack, wait_for
from tests.factories import Api, stream_events, uid, wait_delivered
from tests.live_server import (
    FrameCheck,
    LiveClient,
    WebNode,
    running_node,
    small_receive_buffer,
    start_node,
)

pytestmark = pytest.mark.slow

LONG_TEXT = "slow readers get this long line again and again. " * 80  # ~4 kB per frame
# Enough ~4 kB frames to overflow 8 KB of server send buffer, a 4 KB client receive buffer and a
# send queue of 8 (about 15 frames), with a margin.
POSTS = 24


@pytest.fixture(scope="module")
def node(stack: Stack) -> Iterator[WebNode]:
    """The main web node (production defaults)."""
    n = start_node(stack, "a")
    yield n
    n.stop()


@pytest.fixture(scope="module")
def node_b(stack: Stack) -> Iterator[WebNode]:
    """A second web node on the same database and Redis."""
    n = start_node(stack, "b")
    yield n
    n.stop()


@pytest.fixture(scope="module")
def strict_node(stack: Stack) -> Iterator[WebNode]:
    """Short auth window, no JWT leeway and a 1 s heartbeat, to reach those edges quickly."""
    n = start_node(
        stack,
        "strict",
        {
            "PARLEY_WS_AUTH_TIMEOUT_S": "1",
            "PARLEY_JWT_LEEWAY_S": "0",
            "PARLEY_WS_PING_S": "1",
        },
    )
    yield n
    n.stop()


@pytest.fixture
def connect(api: Api) -> Iterator[Any]:
    """Open sockets as a user; all are closed at the end of the test, and every frame they
    received must be one that /asyncapi.json describes, in the shape it describes."""
    opened: list[LiveClient] = []

    def _connect(
        node: WebNode,
        user: str | None = None,
        *,
        token: str | None = None,
        options: dict[str, Any] | None = None,
        **params: str,
    ) -> LiveClient:
        if user is not None or token is not None:
            params["token"] = token or api.token(str(user))
        client = LiveClient.connect(node.ws_url(**params), **(options or {}))
        opened.append(client)
        return client

    yield _connect
    for c in opened:
        c.close()
    check = FrameCheck(api.get("/asyncapi.json").get_json())
    wrong = [p for c in opened for frame in c.received for p in check.problems(frame)]
    assert not wrong, "frames /asyncapi.json does not describe:\n" + "\n".join(wrong[:20])


def _ready(client: LiveClient) -> None:
    """Ping/pong round trip: the session is authenticated, registered and positioned."""
    client.send({"type": "ping"})
    client.wait_type("pong")


def _message_ids(client: LiveClient) -> list[str]:
    return [m["data"]["id"] for m in client.messages()]


def _wait_messages(client: LiveClient, mids: list[str], timeout: float = 30) -> None:
    want = set(mids)
    client.wait(lambda _m: want <= set(_message_ids(client)), timeout, f"messages {mids}")


# --- delivery ---------------------------------------------------------------------------------


def test_message_new_carries_the_full_message_as_the_recipient_gets_it_over_rest(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """A live message.new has an id and the decrypted message exactly as GET renders it for
    that recipient; writing it to the socket moves the sender's status to delivered."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    bob = connect(node, b)
    _ready(bob)
    mid = api.send(a, cid, "the crane arrives at seven")["id"]
    event = bob.wait(lambda m: m["type"] == "message.new", what="message.new")
    assert event["id"] and set(event) == {"type", "id", "data"}
    assert event["data"]["text"] == "the crane arrives at seven"
    _committed(api, mid, b)
    rest = api.get(f"/v1/messages/{mid}", user=b).get_json()
    assert event["data"] == rest
    wait_for(
        lambda: api.get(f"/v1/messages/{mid}", user=a).get_json()["status"] == "delivered",
        20,
        what="the sender's status to become delivered",
    )


def _committed(api: Api, mid: str, member: str) -> None:
    """The fan-out appends message.new before it commits `delivered` (its frame says
    delivered already): GET answers the same once the commit is in."""
    wait_for(
        lambda: api.get(f"/v1/messages/{mid}", user=member).get_json().get("state") == "delivered",
        20,
        what="the fan-out's commit",
    )


def test_in_a_group_each_socket_gets_the_message_as_its_own_user_gets_it_over_rest(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """Viewers who see a message alike share one rendered frame, the sender sees their own
    fields: each socket's message.new (the sender's own included) is GET's answer for its user
    (but the sender's status, which moves on as the others receive it), and its id is an
    entry of that user's own stream."""
    sender, b, c = uid(), uid(), uid()
    cid = api.conversation(sender, b, c)
    sockets = {user: connect(node, user) for user in (sender, b, c)}
    for sock in sockets.values():
        _ready(sock)
    mid = api.send(sender, cid, "the crane arrives at seven", client_msg_id="crane-1")["id"]
    _committed(api, mid, b)
    for user, sock in sockets.items():
        event = sock.wait(lambda m: m["type"] == "message.new", what=f"{user}'s message.new")
        rest = api.get(f"/v1/messages/{mid}", user=user).get_json()
        if user == sender:
            assert event["data"].pop("status") == "sent" and rest.pop("status")
        assert event["data"] == rest
        entries = live.redis.xrange(stream_key(user))
        assert event["id"] in [(e.decode() if isinstance(e, bytes) else e) for e, _ in entries]
    own = sockets[sender].messages()[0]["data"]
    assert own["client_msg_id"] == "crane-1"
    assert "client_msg_id" not in sockets[b].messages()[0]["data"]


def test_live_messages_arrive_masked_however_fast_the_hub_is(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """The hub renders a message.new as soon as the fan-out appends it, before the fan-out
    commits: the verdict's spans must be committed by then, or a phone number goes out."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    bob = connect(node, b)
    _ready(bob)
    mids = [api.send(a, cid, f"call me on 415 555 01{i:02d} tonight")["id"] for i in range(30)]
    _wait_messages(bob, mids)
    texts = [m["data"]["text"] for m in bob.messages()]
    assert len(texts) == 30
    assert not [t for t in texts if "555" in t], texts
    assert all(t.startswith("call me on ") and t.endswith(" tonight") for t in texts)


def test_resume_with_since_replays_exactly_the_missed_events_with_no_duplicate_at_the_seam(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """Posts made while disconnected, and others made while reconnecting, each arrive once,
    in order, after the id the client resumed from."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    first = connect(node, b)
    _ready(first)
    m1 = api.send(a, cid, "one")["id"]
    seen = first.wait(lambda m: m["type"] == "message.new", what="m1")
    first.close()
    offline = [api.send(a, cid, f"offline {i}")["id"] for i in range(3)]
    wait_delivered(live, b, offline)
    token_a = api.token(a)

    def post_while_reconnecting() -> None:
        for i in range(4):
            status, _ = node.request(
                "POST", f"/v1/conversations/{cid}/messages", token_a, {"text": f"seam {i}"}
            )
            assert status == 202

    poster = threading.Thread(target=post_while_reconnecting)
    poster.start()
    again = connect(node, b, since=seen["id"])
    poster.join(30)
    with api.stack.svc.Session() as s:
        all_ids = list(
            s.scalars(
                select(Message.id).where(Message.conversation_id == cid).order_by(Message.seq)
            )
        )
    assert all_ids[0] == m1 and len(all_ids) == 8
    _wait_messages(again, all_ids[1:])
    _ready(again)  # anything duplicated would have been queued before this pong
    assert _message_ids(again) == all_ids[1:]
    ids = [m["id"] for m in again.messages()]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == 7
    assert all(i > seen["id"] for i in ids)


def test_resume_frame_after_auth_frame_replays_like_since_in_the_url(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """Token and resume position may come as first frames instead of URL parameters."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mids = [api.send(a, cid, f"note {i}")["id"] for i in range(2)]
    wait_delivered(live, b, mids)
    first_id = stream_events(live, b, "message.new")[0]["id"]
    client = connect(node)
    client.send({"type": "resume", "since": first_id})
    client.send({"type": "auth", "token": api.token(b)})
    _wait_messages(client, mids[1:])
    assert _message_ids(client) == mids[1:]


def test_resume_from_a_trimmed_id_gets_resync_and_then_live_events(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """An id older than what the stream still keeps cannot be replayed without a gap: the
    client is told to resync (with the oldest id kept) and receives live events after it."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mids = [api.send(a, cid, f"old {i}")["id"] for i in range(3)]
    wait_delivered(live, b, mids)
    events = stream_events(live, b)
    live.redis.xtrim(stream_key(b), maxlen=1, approximate=False)  # what the trim job does
    client = connect(node, b, since=events[0]["id"])
    resync = client.wait_type("resync")
    assert "id" not in resync
    assert resync["data"]["oldest"] == events[-1]["id"]
    assert resync["data"]["reason"].startswith("trimmed")
    later = api.send(a, cid, "after the resync")["id"]
    _wait_messages(client, [later])
    assert _message_ids(client) == [later]


def test_without_since_the_socket_starts_live_from_now(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    old = api.send(a, cid, "before connecting")["id"]
    wait_delivered(live, b, [old])
    client = connect(node, b)
    _ready(client)
    new = api.send(a, cid, "after connecting")["id"]
    _wait_messages(client, [new])
    assert _message_ids(client) == [new]


def test_held_message_reaches_only_its_sender(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """A message held by moderation is never pushed to the other member; its sender gets the
    update with state held."""
    a, b = uid(), uid()
    cid = api.conversation(a, b, ctype="support")
    alice, bob = connect(node, a), connect(node, b)
    _ready(alice)
    _ready(bob)
    held = api.send(a, cid, "write me at someone@example.com")["id"]
    update = alice.wait(
        lambda m: m["type"] == "message.updated" and m["data"]["id"] == held, what="held update"
    )
    assert update["data"]["state"] == "held"
    fine = api.send(a, cid, "see you there")["id"]
    _wait_messages(bob, [fine])
    assert _message_ids(bob) == [fine]
    assert not bob.messages("message.updated")


def test_edit_reaction_and_delete_reach_the_other_member_in_order(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    """message.updated carries the edited message as GET renders it; reaction and
    message.deleted carry their ids."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    bob = connect(node, b)
    _ready(bob)
    mid = api.send(a, cid, "meet at noon")["id"]
    _wait_messages(bob, [mid])
    assert api.patch(f"/v1/messages/{mid}", user=a, json={"text": "meet at one"}).status_code == 200
    updated = bob.wait_type("message.updated")
    assert updated["data"]["text"] == "meet at one"
    assert updated["data"] == api.get(f"/v1/messages/{mid}", user=b).get_json()
    assert api.put(f"/v1/messages/{mid}/reactions/👍", user=a).status_code == 200
    reaction = bob.wait_type("reaction")["data"]
    assert reaction == {
        "conversation_id": cid,
        "message_id": mid,
        "user_id": a,
        "emoji": "👍",
        "action": "added",
    }
    assert api.delete(f"/v1/messages/{mid}", user=a).status_code == 200
    deleted = bob.wait_type("message.deleted")
    assert deleted["data"] == {"conversation_id": cid, "message_id": mid, "seq": 1}
    ids = [m["id"] for m in bob.received if "id" in m]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


# --- client frames ----------------------------------------------------------------------------


def test_typing_reaches_the_other_participant_and_not_the_sender(
    api: Api, node: WebNode, connect: Any
) -> None:
    a, b, outsider = uid(), uid(), uid()
    cid = api.conversation(a, b)
    alice, bob, eve = connect(node, a), connect(node, b), connect(node, outsider)
    for c in (alice, bob, eve):
        _ready(c)
    alice.send({"type": "typing", "conversation_id": cid})
    typing = bob.wait_type("typing")
    assert typing["data"]["conversation_id"] == cid and typing["data"]["user_id"] == a
    assert typing["data"]["expires_in"] > 0 and "id" not in typing
    alice.send({"type": "ping"})
    alice.wait_type("pong")  # a typing echo to the sender would have been queued before it
    assert not alice.messages("typing")
    eve.send({"type": "typing", "conversation_id": cid})
    error = eve.wait_type("error")
    assert "not a participant" in error["data"]["detail"]


def test_read_frame_moves_the_cursor_and_the_sender_gets_a_receipt(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    alice, bob = connect(node, a), connect(node, b)
    _ready(alice)
    _ready(bob)
    api.send(a, cid, "did you read this?")
    seq = bob.wait_type("message.new")["data"]["seq"]
    bob.send({"type": "read", "conversation_id": cid, "seq": seq})
    receipt = alice.wait_type("receipt")
    assert receipt["id"]
    assert receipt["data"] == {"conversation_id": cid, "user_id": b, "read_seq": seq}
    bob.send({"type": "read", "conversation_id": cid, "seq": seq + 5})
    assert "beyond the last message" in bob.wait_type("error")["data"]["detail"]


def test_malformed_and_unknown_frames_get_an_error_and_the_socket_stays_open(
    api: Api, node: WebNode, connect: Any
) -> None:
    client = connect(node, uid())
    _ready(client)
    bad: list[Any] = [
        "not json at all",
        "[1, 2, 3]",
        {"no": "type"},
        {"type": "launch"},
        {"type": "read", "conversation_id": 42, "seq": "x"},
        {"type": "typing"},
        {"type": "resume"},
    ]
    for frame in bad:
        client.send(frame)
        assert client.next()["type"] == "error", frame
    client.send_binary(b"\x00\x01")
    assert "binary" in client.next()["data"]["detail"]
    _ready(client)


def test_a_frame_over_the_size_limit_closes_with_1009(
    api: Api, node: WebNode, connect: Any
) -> None:
    client = connect(node, uid())
    _ready(client)
    client.send({"type": "ping", "padding": "x" * 70_000})
    assert client.wait_closed().code == 1009


# --- authentication and closing ---------------------------------------------------------------


def test_bad_or_missing_token_closes_with_4401(
    api: Api, strict_node: WebNode, connect: Any
) -> None:
    """A bad URL token, no token within the auth window, or a bad auth frame: 4401."""
    assert connect(strict_node, token="not-a-jwt").wait_closed().code == 4401
    silent = connect(strict_node)
    silent.send({"type": "ping"})
    assert silent.next()["type"] == "pong"
    assert silent.wait_closed().code == 4401
    wrong = connect(strict_node)
    wrong.send({"type": "auth", "token": "also-not-a-jwt"})
    assert wrong.wait_closed().code == 4401
    malformed = connect(strict_node)
    malformed.send({"type": "auth", "token": 42})
    closed = malformed.wait_closed()  # at once, not at the end of the auth window
    assert closed.code == 4401 and closed.reason.startswith("invalid auth frame: token")


def test_an_auth_frame_with_a_fresh_token_keeps_the_socket_open_past_the_old_expiry(
    api: Api, stack: Stack, strict_node: WebNode, connect: Any
) -> None:
    """Renewing works with real JWTs (hundreds of characters), for the same user only."""
    user = uid()
    with stack.app.app_context():
        from web.auth import codec

        short = codec().issue(user, ttl_s=2)
    expires = time.time() + 2
    client = connect(strict_node, token=short)
    _ready(client)
    fresh = api.token(user)
    assert len(fresh) > 100
    client.send({"type": "auth", "token": fresh})
    client.send({"type": "auth", "token": api.token(uid())})
    assert "one user" in client.wait_type("error")["data"]["detail"]
    while time.time() < expires + 1.5:  # the old token's 4001 would have come by now
        _ready(client)
        time.sleep(0.1)
    assert client.closed is None


def test_expired_token_closes_with_4001(
    api: Api, stack: Stack, strict_node: WebNode, connect: Any
) -> None:
    with stack.app.app_context():
        from web.auth import codec

        token = codec().issue(uid(), ttl_s=2)
    client = connect(strict_node, token=token)
    _ready(client)
    closed = client.wait_closed(15)
    assert closed.code == 4001 and "expired" in closed.reason


def test_dead_peer_is_closed_by_the_heartbeat_while_a_responsive_one_stays(
    api: Api, strict_node: WebNode, connect: Any
) -> None:
    """websocket-client answers pings only while reading: one that stops reading looks dead,
    is closed with 4002 and goes offline; one that keeps reading stays."""
    quiet_user, chatty_user = uid(), uid()
    cid = api.conversation(chatty_user, quiet_user)
    quiet, chatty = connect(strict_node, quiet_user), connect(strict_node, chatty_user)
    _ready(quiet)

    def only_chatty_online() -> bool:
        _ready(chatty)  # reading also answers the server's pings
        resp = api.get(f"/v1/conversations/{cid}/presence", user=chatty_user)
        return bool(resp.get_json()["online"] == [chatty_user])

    wait_for(only_chatty_online, 20, 0.2, "the silent peer to be dropped")
    assert quiet.wait_closed().code == 4002
    _ready(chatty)


def test_slow_reader_is_closed_with_4008_and_resumes_without_loss_while_others_keep_up(
    api: Api, live: Stack, connect: Any
) -> None:
    """A socket that stops reading fills its bounded queue and is closed with 4008 — the hub
    and another socket on the same node are not held up — and resuming from the last id it
    got delivers the rest exactly once."""
    a, b, c = uid(), uid(), uid()
    cid = api.conversation(a, b, c)
    with running_node(
        live, "small", {"PARLEY_WS_SEND_QUEUE": "8", "PARLEY_WS_SNDBUF": "8192"}
    ) as n:
        slow = connect(n, b, options={"sockopt": small_receive_buffer()})
        fast = connect(n, c)
        _ready(slow)
        _ready(fast)
        mids: list[str] = []

        def post() -> None:  # from another thread: this one keeps `fast` reading
            mids.extend(api.send(a, cid, f"{i} {LONG_TEXT}")["id"] for i in range(POSTS))

        poster = threading.Thread(target=post)
        poster.start()
        fast.wait(lambda _m: len(fast.messages()) == POSTS, 60, "all messages on the fast socket")
        poster.join(10)
        assert _message_ids(fast) == mids
        closed = slow.wait_closed(30)
        assert closed.code == 4008 and "since" in closed.reason
        got = _message_ids(slow)
        assert got == mids[: len(got)] and len(got) < len(mids)
        # Resume from the last id received (or from the start if nothing got through).
        again = connect(n, b, since=slow.messages()[-1]["id"] if got else "0-0")
        _wait_messages(again, mids[len(got) :], 60)
        assert _message_ids(again) == mids[len(got) :]


# --- several nodes ----------------------------------------------------------------------------


def test_a_client_on_one_node_receives_what_was_posted_through_another(
    api: Api, live: Stack, node: WebNode, node_b: WebNode, connect: Any
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    bob = connect(node, b)
    alice = connect(node_b, a)
    _ready(bob)
    _ready(alice)
    status, posted = node_b.request(
        "POST", f"/v1/conversations/{cid}/messages", api.token(a), {"text": "via node b"}
    )
    assert status == 202
    _wait_messages(bob, [posted["id"]])
    alice.send({"type": "typing", "conversation_id": cid})
    assert bob.wait_type("typing")["data"]["user_id"] == a


def test_sigterm_closes_sockets_with_1001_and_clients_resume_on_another_node(
    api: Api, live: Stack, node: WebNode, connect: Any
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    doomed = start_node(live, "doomed")
    try:
        client = connect(doomed, b)
        _ready(client)
        m1 = api.send(a, cid, "before the restart")["id"]
        _wait_messages(client, [m1])
        last = client.messages()[-1]["id"]
        doomed.proc.send_signal(signal.SIGTERM)
        closed = client.wait_closed(15)
        assert closed.code == 1001
        m2 = api.send(a, cid, "during the restart")["id"]
        wait_delivered(live, b, [m2])
        again = connect(node, b, since=last)
        m3 = api.send(a, cid, "after the restart")["id"]
        _wait_messages(again, [m2, m3])
        assert _message_ids(again) == [m2, m3]
        assert doomed.proc.wait(20) == 0
    finally:
        doomed.stop()


# --- presence ---------------------------------------------------------------------------------


def test_presence_shows_who_holds_a_socket_and_is_announced_to_small_conversations(
    api: Api, node: WebNode, node_b: WebNode, connect: Any
) -> None:
    a, b, outsider = uid(), uid(), uid()
    cid = api.conversation(a, b)
    alice = connect(node, a)
    _ready(alice)
    bob = connect(node_b, b)
    _ready(bob)
    event = alice.wait(lambda m: m["type"] == "presence" and m["data"]["user_id"] == b)
    assert event["data"]["status"] == "online" and "id" not in event

    def online() -> list[str]:
        resp = api.get(f"/v1/conversations/{cid}/presence", user=a)
        assert resp.status_code == 200
        return list(resp.get_json()["online"])

    assert sorted(online()) == sorted([a, b])
    bob.close()
    offline = alice.wait(lambda m: m["type"] == "presence" and m["data"]["status"] == "offline")
    assert offline["data"]["user_id"] == b
    assert online() == [a]
    assert api.get(f"/v1/conversations/{cid}/presence", user=outsider).status_code == 404
    spec = api.get("/openapi.json").get_json()
    assert "get" in spec["paths"]["/v1/conversations/{cid}/presence"]
