"""Conversations over REST against real SQLite and PostgreSQL."""

from __future__ import annotations

from tests.factories import Api, uid


def test_direct_conversation_is_created_once_then_returned_again(api: Api) -> None:
    a, b = uid("a"), uid("b")
    first = api.post("/v1/conversations", user=a, json={"type": "direct", "members": [b]})
    assert first.status_code == 201
    body = first.get_json()
    assert {m["user_id"] for m in body["members"]} == {a, b}
    assert body["status"] == "active" and body["type"] == "direct"
    again = api.post("/v1/conversations", user=b, json={"type": "direct", "members": [a]})
    assert again.status_code == 200
    assert again.get_json()["id"] == body["id"]


def test_direct_conversation_needs_exactly_one_other_member(api: Api) -> None:
    a = uid()
    resp = api.post("/v1/conversations", user=a, json={"type": "direct", "members": [uid(), uid()]})
    assert resp.status_code == 422
    assert resp.content_type == "application/problem+json"
    assert "members" in resp.get_json()["errors"]


def test_context_conversation_is_get_or_create_per_members(api: Api) -> None:
    a, b, c = uid(), uid(), uid()
    ctx = {"type": "booking", "id": uid("bk")}
    one = api.post(
        "/v1/conversations",
        user=a,
        json={"type": "group", "members": [b], "context": ctx, "subject": "Booking"},
    )
    same = api.post(
        "/v1/conversations", user=b, json={"type": "group", "members": [a], "context": ctx}
    )
    other = api.post(
        "/v1/conversations", user=a, json={"type": "group", "members": [c], "context": ctx}
    )
    assert (one.status_code, same.status_code, other.status_code) == (201, 200, 201)
    assert one.get_json()["id"] == same.get_json()["id"] != other.get_json()["id"]
    assert one.get_json()["context"] == ctx
    listed = api.get(f"/v1/conversations?context_type=booking&context_id={ctx['id']}", user=a)
    assert {c["id"] for c in listed.get_json()["items"]} == {
        one.get_json()["id"],
        other.get_json()["id"],
    }


def test_list_is_newest_activity_first_and_cursor_pages_are_stable(api: Api) -> None:
    me = uid()
    ids = [api.conversation(me, uid(), subject=f"c{i}") for i in range(5)]
    api.send(me, ids[1], "bump")  # activity moves c1 to the top
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/conversations?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(url, user=me).get_json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[0] == ids[1]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert seen[1:] == [i for i in reversed(ids) if i != ids[1]]


def test_only_participants_can_read_a_conversation(api: Api) -> None:
    a, b, stranger = uid(), uid(), uid()
    cid = api.conversation(a, b)
    assert api.get(f"/v1/conversations/{cid}", user=b).status_code == 200
    resp = api.get(f"/v1/conversations/{cid}", user=stranger)
    assert resp.status_code == 404
    assert api.get(f"/v1/conversations/{cid}/messages", user=stranger).status_code == 404
    # a platform moderator may look in
    assert (
        api.get(f"/v1/conversations/{cid}", user=stranger, roles=("moderator",)).status_code == 200
    )


def test_owner_changes_subject_and_status_members_may_not(api: Api) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    denied = api.patch(f"/v1/conversations/{cid}", user=b, json={"subject": "mine"})
    assert denied.status_code == 403
    ok = api.patch(f"/v1/conversations/{cid}", user=a, json={"subject": "New", "status": "closed"})
    assert ok.status_code == 200
    assert ok.get_json()["subject"] == "New" and ok.get_json()["status"] == "closed"
    closed = api.post(f"/v1/conversations/{cid}/messages", user=b, json={"text": "hi"})
    assert closed.status_code == 409
    filtered = api.get("/v1/conversations?status=closed", user=a).get_json()["items"]
    assert cid in [c["id"] for c in filtered]


def test_members_are_added_removed_and_given_roles(api: Api) -> None:
    a, b, c = uid(), uid(), uid()
    cid = api.conversation(a, b)
    added = api.post(f"/v1/conversations/{cid}/members", user=a, json={"user_ids": [c]})
    assert added.status_code == 200
    assert c in {m["user_id"] for m in added.get_json()["members"]}
    assert (
        api.post(f"/v1/conversations/{cid}/members", user=b, json={"user_ids": [uid()]}).status_code
        == 403
    )
    promoted = api.patch(f"/v1/conversations/{cid}/members/{c}", user=a, json={"role": "admin"})
    assert {m["user_id"]: m["role"] for m in promoted.get_json()["members"]}[c] == "admin"
    assert api.delete(f"/v1/conversations/{cid}/members/{b}", user=c).status_code == 200
    assert api.get(f"/v1/conversations/{cid}", user=b).status_code == 404
    # the last owner cannot step down
    assert (
        api.patch(
            f"/v1/conversations/{cid}/members/{a}", user=a, json={"role": "member"}
        ).status_code
        == 409
    )


def test_direct_conversation_cannot_gain_members(api: Api) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b, ctype="direct")
    resp = api.post(f"/v1/conversations/{cid}/members", user=a, json={"user_ids": [uid()]})
    assert resp.status_code == 409


def test_per_user_archive_mute_and_level_affect_only_the_caller(api: Api) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    resp = api.patch(
        f"/v1/conversations/{cid}/me",
        user=b,
        json={
            "archived": True,
            "notification_level": "mentions",
            "muted_until": "2099-01-01T00:00:00Z",
        },
    )
    assert resp.status_code == 200
    me = resp.get_json()["me"]
    assert me["archived"] is True and me["notification_level"] == "mentions"
    assert me["muted_until"].startswith("2099-01-01")
    archived = api.get("/v1/conversations?archived=true", user=b).get_json()["items"]
    assert [c["id"] for c in archived] == [cid]
    assert api.get("/v1/conversations?archived=true", user=a).get_json()["items"] == []


def test_api_key_creates_conversations_for_users_and_posts_system_messages(api: Api) -> None:
    key = api.api_key()
    a, b = uid(), uid()
    resp = api.post(
        "/v1/conversations",
        key=key,
        json={"type": "support", "members": [a, b], "subject": "Ticket 7"},
    )
    assert resp.status_code == 201
    cid = resp.get_json()["id"]
    msg = api.post(
        f"/v1/conversations/{cid}/messages",
        key=key,
        json={"type": "system", "text": "Provider assigned"},
    )
    assert msg.status_code == 202 and msg.get_json()["sender_id"] is None
    user_system = api.post(
        f"/v1/conversations/{cid}/messages", user=a, json={"type": "system", "text": "fake"}
    )
    assert user_system.status_code == 403
    bad_key = api.get("/v1/conversations", key="pk_deadbeef_nope")
    assert bad_key.status_code == 401


def test_list_rejects_unknown_query_parameters(api: Api) -> None:
    resp = api.get("/v1/conversations?colour=red", user=uid())
    assert resp.status_code == 422
    assert "colour" in resp.get_json()["errors"]
