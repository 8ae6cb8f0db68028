"""Messages over REST: validation, idempotency, pagination, permissions, seq under concurrency."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, select, update

from core.ids import utcnow
from domain.events import PUBLISH_TASK
from models import Conversation, DeliveryCursor, Message, MessageEdit, Outbox, Reaction
from tests.conftest import Stack
from tests.factories import Api, uid


def _count(stack: Stack, cid: str) -> int:
    with stack.svc.Session() as s:
        return (
            s.scalar(
                select(func.count()).select_from(Message).where(Message.conversation_id == cid)
            )
            or 0
        )


def test_post_is_202_pending_with_seq_and_the_same_client_msg_id_returns_it_again(
    api: Api, stack: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    first = api.post(
        f"/v1/conversations/{cid}/messages", user=a, json={"text": "hello", "client_msg_id": "m-1"}
    )
    assert first.status_code == 202
    body = first.get_json()
    assert body["state"] == "pending" and body["seq"] == 1 and body["conversation_id"] == cid
    again = api.post(
        f"/v1/conversations/{cid}/messages", user=a, json={"text": "hello", "client_msg_id": "m-1"}
    )
    assert again.status_code == 200 and again.get_json()["id"] == body["id"]
    assert _count(stack, cid) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 4001}, "text"),
        ({"text": 5}, "text"),
        ({"text": "hi", "type": "telegram"}, "type"),
        ({"text": "hi", "extra": 1}, "extra"),
        ({"text": "hi", "reply_to": "01NOTAMESSAGE00000000000000"}, "reply_to"),
        ({"text": "hi", "client_msg_id": ""}, "client_msg_id"),
        ({"type": "location", "metadata": {"lat": 200, "lng": 0}}, "metadata"),
        ({"text": "hi", "metadata": {"k": "v" * 9000}}, "metadata"),
        ({"text": "hi", "attachments": ["att_1"]}, "attachments"),
    ],
)
def test_bad_message_input_is_a_problem_and_changes_nothing(
    api: Api, stack: Stack, body: dict, field: str
) -> None:
    a = uid()
    cid = api.conversation(a, uid())
    resp = api.post(f"/v1/conversations/{cid}/messages", user=a, json=body)
    assert resp.status_code == 422, resp.get_json()
    problem = resp.get_json()
    assert resp.content_type == "application/problem+json"
    assert problem["status"] == 422 and problem["detail"] and field in problem["errors"]
    assert _count(stack, cid) == 0
    with stack.svc.Session() as s:
        assert s.get(Conversation, cid).last_seq == 0


def test_wrong_media_type_bad_json_and_huge_bodies_are_problems(api: Api, stack: Stack) -> None:
    a = uid()
    cid = api.conversation(a, uid())
    url = f"/v1/conversations/{cid}/messages"
    assert api.post(url, user=a, data="text=hi").status_code == 415
    bad = api.post(url, user=a, data="{nope", content_type="application/json")
    assert bad.status_code == 400 and bad.content_type == "application/problem+json"
    assert api.post(url, user=a, json=["text"]).status_code == 400
    huge = api.post(url, user=a, data="x" * (300 * 1024), content_type="application/json")
    assert huge.status_code == 413
    wrong_method = api.put(url, user=a, json={})
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    assert _count(stack, cid) == 0


def test_authentication_failures_are_401_problems(api: Api, stack: Stack) -> None:
    import jwt

    assert api.get("/v1/conversations").status_code == 401
    expired = jwt.encode(
        {"sub": "x", "exp": utcnow() - timedelta(minutes=5)},
        stack.svc.settings.jwt_secret,
        algorithm="HS256",
    )
    resp = api.get("/v1/conversations", headers={"Authorization": f"Bearer {expired}"})
    assert resp.status_code == 401 and "expired" in resp.get_json()["detail"]
    forged = jwt.encode(
        {"sub": "x", "exp": utcnow() + timedelta(minutes=5)},
        "another-secret-that-is-long-enough-000000",
        algorithm="HS256",
    )
    assert (
        api.get("/v1/conversations", headers={"Authorization": f"Bearer {forged}"}).status_code
        == 401
    )
    unsigned = jwt.encode(
        {"sub": "x", "exp": utcnow() + timedelta(minutes=5)}, None, algorithm="none"
    )
    assert (
        api.get("/v1/conversations", headers={"Authorization": f"Bearer {unsigned}"}).status_code
        == 401
    )


def test_pages_by_seq_forwards_backwards_and_by_cursor(api: Api) -> None:
    a = uid()
    cid = api.conversation(a, uid())
    for i in range(7):
        api.send(a, cid, f"m{i}")
    url = f"/v1/conversations/{cid}/messages"
    page = api.get(f"{url}?after_seq=2&limit=3", user=a).get_json()
    assert [m["seq"] for m in page["items"]] == [3, 4, 5]
    rest = api.get(f"{url}?cursor={page['next_cursor']}", user=a).get_json()
    assert [m["seq"] for m in rest["items"]] == [6, 7] and rest["next_cursor"] is None
    back = api.get(f"{url}?before_seq=6&limit=2", user=a).get_json()
    assert [m["seq"] for m in back["items"]] == [4, 5]
    older = api.get(f"{url}?cursor={back['next_cursor']}&limit=10", user=a).get_json()
    assert [m["seq"] for m in older["items"]] == [1, 2, 3]
    assert api.get(f"{url}?cursor=garbage", user=a).status_code == 422
    assert api.get(f"{url}?limit=1000", user=a).status_code == 422


def test_recipients_do_not_see_messages_before_delivery_senders_do(api: Api, idle: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "not yet moderated")["id"]
    assert [
        m["id"] for m in api.get(f"/v1/conversations/{cid}/messages", user=a).get_json()["items"]
    ] == [mid]
    assert api.get(f"/v1/conversations/{cid}/messages", user=b).get_json()["items"] == []
    assert api.get(f"/v1/messages/{mid}", user=b).status_code == 404


def test_a_message_opens_for_members_once_its_verdict_commits(api: Api, idle: Stack) -> None:
    """The fan-out appends `message.new` after the verdict commits and marks the message
    delivered after that: in between, a member fetching what its socket announced gets it."""
    a, b, outsider = uid(), uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "passed, not yet delivered")["id"]
    with idle.svc.Session.begin() as s:  # what the moderate stage commits before the fan-out
        s.execute(update(Message).where(Message.id == mid).values(moderation_action="allow"))
    resp = api.get(f"/v1/messages/{mid}", user=b)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["text"] == "passed, not yet delivered"
    assert api.get(f"/v1/messages/{mid}", user=outsider).status_code == 404
    with idle.svc.Session.begin() as s:  # a held message stays its sender's
        s.execute(
            update(Message).where(Message.id == mid).values(moderation_action="hold", state="held")
        )
    assert api.get(f"/v1/messages/{mid}", user=b).status_code == 404


def _deliver(stack: Stack, mid: str) -> None:
    """Mark a message delivered directly, for REST tests that do not run the pipeline."""
    with stack.svc.Session.begin() as s:
        s.execute(
            update(Message)
            .where(Message.id == mid)
            .values(state="delivered", moderation_action="allow")
        )


def test_edit_keeps_sealed_history_and_only_the_sender_may_edit(api: Api, stack: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "first draft")["id"]
    _deliver(stack, mid)
    assert api.patch(f"/v1/messages/{mid}", user=b, json={"text": "hijack"}).status_code == 403
    resp = api.patch(f"/v1/messages/{mid}", user=a, json={"text": "second draft"})
    assert resp.status_code == 200
    assert resp.get_json()["text"] == "second draft" and resp.get_json()["edited_at"]
    with stack.svc.Session() as s:
        edits = s.scalars(select(MessageEdit).where(MessageEdit.message_id == mid)).all()
        assert len(edits) == 1 and b"first draft" not in edits[0].text_ct
        from domain.messages import edit_aad

        assert (
            stack.svc.keyring.open_text(edits[0].key_id, edits[0].text_ct, edit_aad(mid))
            == "first draft"
        )
    with stack.svc.Session.begin() as s:
        s.execute(
            update(Message)
            .where(Message.id == mid)
            .values(created_at=utcnow() - timedelta(hours=1))
        )
    late = api.patch(f"/v1/messages/{mid}", user=a, json={"text": "too late"})
    assert late.status_code == 409


def test_delete_leaves_a_tombstone_and_only_the_sender_may_delete(api: Api, stack: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "oops")["id"]
    _deliver(stack, mid)
    assert api.delete(f"/v1/messages/{mid}", user=b).status_code == 403
    assert api.delete(f"/v1/messages/{mid}", user=a).status_code == 200
    seen = api.get(f"/v1/messages/{mid}", user=b).get_json()
    assert seen["deleted"] is True and seen["text"] is None
    assert api.patch(f"/v1/messages/{mid}", user=a, json={"text": "x"}).status_code == 409


def test_a_reaction_is_taken_once_the_verdict_passed_before_the_fan_out_commits(
    api: Api, idle: Stack
) -> None:
    """The fan-out appends `message.new` before it commits `delivered`, so a recipient may
    react to a message its socket announced while the row still reads pending with a passing
    verdict: the reaction is taken (as can_see lets it be read); before its verdict the
    recipient cannot see the message at all (404)."""
    from domain import moderation_stage

    a, b = uid(), uid()
    cid = api.conversation(a, b)
    waiting = api.send(a, cid, "no verdict yet")["id"]
    assert api.put(f"/v1/messages/{waiting}/reactions/👍", user=b).status_code == 404
    with idle.svc.Session.begin() as s:  # the verdict's transaction only: no fan-out
        moderation_stage.moderate_waiting(idle.svc, s, {waiting: cid})
    with idle.svc.ReadSession() as s:
        row = s.execute(
            select(Message.state, Message.moderation_action).where(Message.id == waiting)
        ).one()
    assert tuple(row) == ("pending", "allow")
    r = api.put(f"/v1/messages/{waiting}/reactions/👍", user=b)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]


# A change made while a fan-out is in flight: (what it does, the event it emits, its status).
CHANGES: dict[str, tuple[Any, str, int]] = {
    "edit": (
        lambda api, mid, a: api.patch(f"/v1/messages/{mid}", user=a, json={"text": "at one"}),
        "message.updated",
        200,
    ),
    "delete": (
        lambda api, mid, a: api.delete(f"/v1/messages/{mid}", user=a),
        "message.deleted",
        200,
    ),
    "reaction": (
        lambda api, mid, a: api.put(f"/v1/messages/{mid}/reactions/👍", user=a),
        "reaction",
        200,
    ),
    "reject": (
        lambda api, mid, a: api.post(
            f"/v1/moderation/messages/{mid}/reject",
            user=uid("mod"),
            roles=("moderator",),
            json={"reason": "spam"},
        ),
        "message.updated",
        200,
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_during_a_fan_out_waits_for_its_commit_and_tells_every_member(
    api: Api, idle: Stack, change: str
) -> None:
    """The fan-out appends `message.new` while it holds the conversation's cursor row and
    commits `delivered` after: a change made in between (domain.messages.settle) must wait for
    that commit, so its event follows the message.new, and go to every member, not to the
    sender alone as for a message no one else has seen (found by a red CI run: test_ws's edit
    on PostgreSQL). The fan-out in flight is a transaction holding what the real one holds:
    the cursor row, `delivered` written and not yet committed."""
    from domain import moderation_stage

    act, etype, status = CHANGES[change]
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "meet at noon")["id"]
    with idle.svc.Session.begin() as s:  # the verdict's transaction only
        moderation_stage.moderate_waiting(idle.svc, s, {mid: cid})
    fan = idle.svc.Session()
    fan.begin()
    fan.execute(
        select(DeliveryCursor.conversation_id)
        .where(DeliveryCursor.conversation_id == cid)
        .with_for_update()
    )
    fan.execute(update(Message).where(Message.id == mid).values(state="delivered"))
    answers: list[Any] = []
    changing = threading.Thread(target=lambda: answers.append(act(api, mid, a)))
    changing.start()
    try:
        if idle.name == "postgres":  # the change is seen waiting on a lock, not merely slow
            deadline = time.monotonic() + 10

            def waiting() -> int:  # its own transaction: pg_stat_activity is a snapshot
                with idle.svc.engine.connect() as c:
                    return c.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    ).scalar_one()

            while waiting() == 0:
                assert time.monotonic() < deadline, f"the {change} never waited for the fan-out"
                time.sleep(0.02)
        else:  # SQLite: the change's BEGIN IMMEDIATE waits for the write lock
            time.sleep(0.3)
        assert changing.is_alive()
    finally:
        fan.commit()
        fan.close()
    changing.join(20)
    assert answers and answers[0].status_code == status, answers[0].get_json()
    with idle.svc.ReadSession() as s:
        events = [
            args
            for args in s.scalars(select(Outbox.args).where(Outbox.task == PUBLISH_TASK))
            if args[1] == etype and args[2]["message_id"] == mid
        ]
    assert len(events) == 1
    assert sorted(events[0][3]) == sorted([a, b])


def test_pin_reactions_reports_and_replies(api: Api, stack: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "pin me")["id"]
    _deliver(stack, mid)
    assert api.put(f"/v1/messages/{mid}/pin", user=b).status_code == 403
    assert api.put(f"/v1/messages/{mid}/pin", user=a).get_json()["pinned"] is True
    pinned = api.get(f"/v1/conversations/{cid}/messages?pinned=true", user=b).get_json()
    assert [m["id"] for m in pinned["items"]] == [mid]
    assert api.delete(f"/v1/messages/{mid}/pin", user=a).get_json()["pinned"] is False
    for _ in range(2):
        r = api.put(f"/v1/messages/{mid}/reactions/👍", user=b)
        assert r.status_code == 200
    assert r.get_json()["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]
    assert api.get(f"/v1/messages/{mid}", user=a).get_json()["reactions"][0]["me"] is False
    assert api.delete(f"/v1/messages/{mid}/reactions/👍", user=b).get_json()["reactions"] == []
    first = api.post(f"/v1/messages/{mid}/reports", user=b, json={"reason": "spam"})
    again = api.post(f"/v1/messages/{mid}/reports", user=b, json={"reason": "spam"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["id"] == again.get_json()["id"]
    assert (
        api.post(f"/v1/messages/{mid}/reports", user=a, json={"reason": "spam"}).status_code == 409
    )
    assert (
        api.post(f"/v1/messages/{mid}/reports", user=b, json={"reason": "meh"}).status_code == 422
    )
    reply = api.send(b, cid, "replying", reply_to=mid)
    assert reply["reply_to"] == mid


def test_read_cursor_moves_forward_only_and_drives_unread(api: Api, stack: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    ids = [api.send(a, cid, f"m{i}")["id"] for i in range(3)]
    for mid in ids:
        _deliver(stack, mid)
    conv = api.get(f"/v1/conversations/{cid}", user=b).get_json()
    assert conv["unread_count"] == 3
    assert api.get("/v1/unread", user=b).get_json() == {"total": 3, "conversations": 1}
    r = api.post(f"/v1/conversations/{cid}/read", user=b, json={"seq": 2})
    assert r.get_json() == {"conversation_id": cid, "read_seq": 2, "unread_count": 1}
    back = api.post(f"/v1/conversations/{cid}/read", user=b, json={"seq": 1})
    assert back.get_json()["read_seq"] == 2
    assert api.post(f"/v1/conversations/{cid}/read", user=b, json={"seq": 99}).status_code == 422
    unread_only = api.get("/v1/conversations?unread_only=true", user=b).get_json()["items"]
    assert [c["id"] for c in unread_only] == [cid]
    api.post(f"/v1/conversations/{cid}/read", user=b, json={"seq": 3})
    assert api.get("/v1/conversations?unread_only=true", user=b).get_json()["items"] == []
    assert api.get(f"/v1/messages/{ids[0]}", user=a).get_json()["status"] == "seen"


# (action, role of actor in the conversation or None for a stranger, expected status)
MATRIX = [
    ("read", "member", 200),
    ("read", "observer", 200),
    ("read", None, 404),
    ("post", "member", 202),
    ("post", "observer", 403),
    ("post", None, 404),
    ("pin", "member", 403),
    ("pin", "moderator", 200),
    ("pin", "admin", 200),
    ("edit_other", "admin", 403),
    ("delete_other", "owner", 403),
]


@pytest.mark.parametrize(("action", "role", "expected"), MATRIX)
def test_permission_matrix(
    api: Api, stack: Stack, action: str, role: str | None, expected: int
) -> None:
    owner, actor = uid("owner"), uid("actor")
    cid = api.conversation(owner, uid())
    if role is not None and role != "owner":
        api.post(
            f"/v1/conversations/{cid}/members", user=owner, json={"user_ids": [actor], "role": role}
        )
    if role == "owner":
        actor = owner
    mid = (
        api.send(owner if role != "owner" else uid(), cid, "target")["id"]
        if role != "owner"
        else None
    )
    if mid is None:  # the actor is the owner: the target must be someone else's message
        other = uid()
        api.post(f"/v1/conversations/{cid}/members", user=owner, json={"user_ids": [other]})
        mid = api.send(other, cid, "target")["id"]
    _deliver(stack, mid)
    calls = {
        "read": lambda: api.get(f"/v1/conversations/{cid}/messages", user=actor),
        "post": lambda: api.post(
            f"/v1/conversations/{cid}/messages", user=actor, json={"text": "hi"}
        ),
        "pin": lambda: api.put(f"/v1/messages/{mid}/pin", user=actor),
        "edit_other": lambda: api.patch(f"/v1/messages/{mid}", user=actor, json={"text": "x"}),
        "delete_other": lambda: api.delete(f"/v1/messages/{mid}", user=actor),
    }
    assert calls[action]().status_code == expected


def test_seq_is_gap_free_under_concurrent_posts(api: Api, stack: Stack) -> None:
    """8 threads x 15 posts on one conversation: seqs are exactly 1..120, no gap, no repeat."""
    users = [uid() for _ in range(8)]
    cid = api.conversation(users[0], *users[1:])
    tokens = {u: api.token(u) for u in users}
    errors: list[object] = []

    def worker(user: str) -> None:
        client = stack.app.test_client()
        for i in range(15):
            r = client.post(
                f"/v1/conversations/{cid}/messages",
                headers={"Authorization": f"Bearer {tokens[user]}"},
                json={"text": f"{user} {i}", "client_msg_id": f"{user}-{i}"},
            )
            if r.status_code != 202:
                errors.append(r.get_json())

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with stack.svc.Session() as s:
        seqs = sorted(s.scalars(select(Message.seq).where(Message.conversation_id == cid)))
        assert seqs == list(range(1, 121))
        assert s.get(Conversation, cid).last_seq == 120


EMOJI_ACCEPTED = [
    "👍",
    "👍🏽",  # with a skin tone
    "👨\u200d👩\u200d👧",  # a ZWJ family
    "🧑🏽\u200d💻",  # ZWJ and a skin tone
    "🏳️\u200d🌈",  # a flag sequence with VS16
    "🇫🇷",  # regional indicators
    "1️⃣",  # a keycap
    "❤",  # without, and with, its variation selector
    "❤️",
]
EMOJI_REFUSED = ["hello", "a", "1", ":thumbsup:", "👍👍", "👍 ", " 👍", "\u200d", "x\u20e3", "👍x"]


def _reactions(stack: Stack, mid: str) -> list[tuple[str, str]]:
    with stack.svc.Session() as s:
        rows = s.execute(select(Reaction.user_id, Reaction.emoji).where(Reaction.message_id == mid))
        return sorted((user, text) for user, text in rows)


def test_a_reaction_is_one_emoji_any_other_text_is_a_422_problem_and_changes_nothing(
    api: Api, stack: Stack
) -> None:
    """One emoji, as Unicode defines it (the `emoji` library): sequences with skin tones, ZWJ,
    flags and keycaps included; words, shortcodes, two emoji or padding are refused."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "react to me")["id"]
    _deliver(stack, mid)
    for text in EMOJI_REFUSED:
        resp = api.put(f"/v1/messages/{mid}/reactions/{quote(text)}", user=b)
        assert resp.status_code == 422, (text, resp.get_json())
        assert resp.content_type == "application/problem+json"
        problem = resp.get_json()
        assert "emoji" in problem["errors"] and "emoji" in problem["detail"]
    assert _reactions(stack, mid) == []
    for text in EMOJI_ACCEPTED:
        resp = api.put(f"/v1/messages/{mid}/reactions/{quote(text)}", user=b)
        assert resp.status_code == 200, (text, resp.get_json())
    assert _reactions(stack, mid) == sorted((b, text) for text in EMOJI_ACCEPTED)
    shown = api.get(f"/v1/messages/{mid}", user=a).get_json()["reactions"]
    assert [r["emoji"] for r in shown] == EMOJI_ACCEPTED
    for text in EMOJI_ACCEPTED:
        assert api.delete(f"/v1/messages/{mid}/reactions/{quote(text)}", user=b).status_code == 200
    assert _reactions(stack, mid) == []


def test_a_reaction_stored_before_the_emoji_rule_can_still_be_taken_back(
    api: Api, stack: Stack
) -> None:
    """Removing is not adding: text reactions saved by an older version must stay removable."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "old reactions")["id"]
    _deliver(stack, mid)
    with stack.svc.Session.begin() as s:
        s.add(Reaction(message_id=mid, user_id=b, emoji="+1"))
    assert api.put(f"/v1/messages/{mid}/reactions/%2B1", user=b).status_code == 422
    resp = api.delete(f"/v1/messages/{mid}/reactions/%2B1", user=b)
    assert resp.status_code == 200 and resp.get_json()["reactions"] == []
    assert _reactions(stack, mid) == []


def test_the_document_says_a_reaction_is_one_emoji(api: Api) -> None:
    paths = api.get("/openapi.json").get_json()["paths"]
    operations = paths["/v1/messages/{mid}/reactions/{emoji}"]
    for method, words in (("put", "One emoji"), ("delete", "an emoji")):
        params = {p["name"]: p for p in operations[method]["parameters"]}
        assert [p["name"] for p in operations[method]["parameters"]] == ["mid", "emoji"]
        assert words in params["emoji"]["description"], params["emoji"]
