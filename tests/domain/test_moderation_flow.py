"""The moderators' side end to end: queue, approve / edit-approve / reject, reports that hold a
message, mutes and bans, flood detection, and the audit log — with a real worker."""

from __future__ import annotations

from tests.conftest import Stack, wait_for
from tests.factories import Api, delivered_ids, stream_events, uid, wait_delivered

MOD = ("moderator",)


def _held(api: Api, live: Stack, sender: str, cid: str, text: str) -> str:
    mid = api.send(sender, cid, text)["id"]
    wait_for(
        lambda: api.get(f"/v1/messages/{mid}", user=sender).get_json()["state"] == "held",
        30,
        what="the message to be held",
    )
    return mid


def test_a_held_message_is_queued_and_approval_delivers_it(api: Api, live: Stack) -> None:
    a, b, mod = uid(), uid(), uid("mod")
    cid = api.conversation(a, b, ctype="support")  # suite policy: e-mail in support is held
    mid = _held(api, live, a, cid, "mail me at jo@example.com")
    assert api.get("/v1/moderation/queue", user=b).status_code == 403
    queue = api.get("/v1/moderation/queue?kind=held&limit=200", user=mod, roles=MOD).get_json()
    item = next(i for i in queue["items"] if i["id"] == mid)
    assert item["text"] == "mail me at jo@example.com" and item["moderation"]["action"] == "hold"
    resp = api.post(
        f"/v1/moderation/messages/{mid}/approve",
        user=mod,
        roles=MOD,
        json={"reason": "address is the shop's"},
    )
    assert resp.status_code == 200 and resp.get_json()["state"] == "delivered"
    wait_delivered(live, b, [mid])
    assert api.get(f"/v1/messages/{mid}", user=b).get_json()["text"] == (
        "mail me at jo@example.com"
    )
    # The approved message is the conversation's preview, in the list and on its own.
    assert api.get(f"/v1/conversations/{cid}", user=b).get_json()["last_message"]["id"] == mid
    listed = api.get("/v1/conversations", user=b).get_json()["items"]
    assert [c["last_message"]["id"] for c in listed if c["id"] == cid] == [mid]
    again = api.post(f"/v1/moderation/messages/{mid}/approve", user=mod, roles=MOD, json={})
    assert again.status_code == 409
    log = api.get(f"/v1/moderation/audit?target_id={mid}", user=mod, roles=MOD).get_json()
    assert [(e["action"], e["actor"], e["reason"]) for e in log["items"]] == [
        ("message.approve", f"user:{mod}", "address is the shop's")
    ]


def _queue_page(api: Api, mod: str, query: str, cursor: str | None, limit: int) -> dict:
    url = f"/v1/moderation/queue?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
    resp = api.get(url, user=mod, roles=MOD)
    assert resp.status_code == 200, resp.get_json()
    page: dict = resp.get_json()
    return page


def _whole_queue(api: Api, mod: str, query: str = "") -> list[dict]:
    """Every page of the queue (the database is shared with the session's other tests)."""
    items: list[dict] = []
    cursor = None
    while True:
        page = _queue_page(api, mod, query, cursor, 200)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _cursor_just_before(api: Api, mod: str, mid: str) -> str | None:
    """The cursor whose next page (no filter) starts with `mid`."""
    cursor = None
    while True:
        page = _queue_page(api, mod, "", cursor, 200)
        ids = [i["id"] for i in page["items"]]
        if mid in ids:
            at = ids.index(mid)
            return cursor if at == 0 else _queue_page(api, mod, "", cursor, at)["next_cursor"]
        cursor = page["next_cursor"]
        assert cursor is not None, f"{mid} is not in the queue"


def test_the_queue_without_a_kind_shows_every_kind_and_pages_across_them(
    api: Api, live: Stack
) -> None:
    """One held, one reported (once: still delivered) and one flagged (masked) message: no
    filter lists all three, oldest first, one page each with limit=1; each kind only its own."""
    a, b, mod = uid(), uid(), uid("mod")
    held = _held(api, live, a, api.conversation(a, b, ctype="support"), "mail me at jo@example.com")
    direct = api.conversation(a, b)
    reported = api.send(a, direct, "see you at noon")["id"]
    flagged = api.send(a, direct, "my mail is jo@example.com")["id"]
    wait_delivered(live, b, [reported, flagged])
    report = api.post(f"/v1/messages/{reported}/reports", user=b, json={"reason": "abuse"})
    assert report.status_code == 201, report.get_json()

    everything = _whole_queue(api, mod)
    ids = [i["id"] for i in everything]
    assert {held, reported, flagged} <= set(ids)
    assert ids == sorted(set(ids)), "oldest first, each message once"
    by_id = {i["id"]: i for i in everything}
    assert by_id[held]["state"] == "held" and by_id[held]["open_reports"] == 0
    assert by_id[reported]["state"] == "delivered" and by_id[reported]["open_reports"] == 1
    assert by_id[flagged]["moderation"]["action"] == "mask"

    cursor = _cursor_just_before(api, mod, held)
    paged = []
    for _ in range(3):
        page = _queue_page(api, mod, "", cursor, 1)
        paged += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert paged == [held, reported, flagged]

    mine = {held, reported, flagged}
    for kind, expected in (("held", held), ("reported", reported), ("flagged", flagged)):
        listed = {i["id"] for i in _whole_queue(api, mod, f"&kind={kind}")}
        assert listed & mine == {expected}, kind
    assert api.get("/v1/moderation/queue?kind=all", user=mod, roles=MOD).status_code == 422


def test_edit_and_approve_delivers_the_moderators_text(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b, ctype="support")
    mid = _held(api, live, a, cid, "write to jo@example.com")
    key = api.api_key()
    resp = api.post(
        f"/v1/moderation/messages/{mid}/approve",
        key=key,
        json={"text": "write to [address removed]", "reason": "contact details"},
    )
    assert resp.status_code == 200
    wait_delivered(live, b, [mid])
    assert api.get(f"/v1/messages/{mid}", user=b).get_json()["text"] == (
        "write to [address removed]"
    )


def test_rejection_tells_the_sender_and_never_reaches_recipients(api: Api, live: Stack) -> None:
    a, b, mod = uid(), uid(), uid("mod")
    cid = api.conversation(a, b, ctype="support")
    first = api.send(a, cid, "hello, about the order")["id"]
    wait_delivered(live, b, [first])
    mid = _held(api, live, a, cid, "jo@example.com please")
    # Once the fan-out walked the held message (its sender is told), the preview is still the
    # delivered one: a walk with nothing delivered keeps the cursor's preview.
    wait_for(
        lambda: any(
            e["data"]["message_id"] == mid for e in stream_events(live, a, "message.updated")
        ),
        30,
        what="the held notice to the sender",
    )
    assert api.get(f"/v1/conversations/{cid}", user=b).get_json()["last_message"]["id"] == first
    assert (
        api.post(f"/v1/moderation/messages/{mid}/reject", user=mod, roles=MOD, json={}).status_code
        == 422
    )  # a reason is required
    resp = api.post(
        f"/v1/moderation/messages/{mid}/reject",
        user=mod,
        roles=MOD,
        json={"reason": "off-platform contact"},
    )
    assert resp.get_json()["state"] == "rejected"
    mine = api.get(f"/v1/messages/{mid}", user=a).get_json()
    assert mine["state"] == "rejected" and mine["moderation"]["reason"] == "off-platform contact"
    assert api.get(f"/v1/messages/{mid}", user=b).status_code == 404
    assert mid not in delivered_ids(live, b)


def test_enough_reports_hold_a_delivered_message_until_a_moderator_decides(
    api: Api, live: Stack
) -> None:
    sender, r1, r2, r3, mod = uid(), uid(), uid(), uid(), uid("mod")
    cid = api.conversation(sender, r1, r2, r3)
    mid = api.send(sender, cid, "buy cheap followers now")["id"]
    wait_delivered(live, r1, [mid])
    for reporter in (r1, r2):
        api.post(f"/v1/messages/{mid}/reports", user=reporter, json={"reason": "spam"})
    assert api.get(f"/v1/messages/{mid}", user=r3).status_code == 200  # 2 < 3: still visible
    api.post(f"/v1/messages/{mid}/reports", user=r3, json={"reason": "spam"})
    assert api.get(f"/v1/messages/{mid}", user=r1).status_code == 404
    updates = wait_for(
        lambda: [
            e for e in stream_events(live, r1, "message.updated") if e["data"]["message_id"] == mid
        ],
        30,
        what="hold event",
    )
    assert len(updates) == 1
    queue = api.get("/v1/moderation/queue?kind=reported&limit=200", user=mod, roles=MOD).get_json()
    assert next(i for i in queue["items"] if i["id"] == mid)["open_reports"] == 3
    api.post(f"/v1/moderation/messages/{mid}/approve", user=mod, roles=MOD, json={})
    assert api.get(f"/v1/messages/{mid}", user=r1).get_json()["state"] == "delivered"
    queue = api.get("/v1/moderation/queue?kind=reported&limit=200", user=mod, roles=MOD).get_json()
    assert mid not in [i["id"] for i in queue["items"]]
    actions = [
        e["action"]
        for e in api.get(f"/v1/moderation/audit?target_id={mid}", user=mod, roles=MOD).get_json()[
            "items"
        ]
    ]
    assert actions == ["message.approve", "message.auto_hold"]


def test_muted_and_banned_users_cannot_post_until_lifted(api: Api, stack: Stack) -> None:
    a, b, mod = uid(), uid(), uid("mod")
    cid = api.conversation(a, b)
    muted = api.post(
        f"/v1/moderation/users/{a}/mute",
        user=mod,
        roles=MOD,
        json={"minutes": 30, "reason": "cool down"},
    )
    assert muted.status_code == 200 and muted.get_json()["muted_until"]
    assert (
        api.post(f"/v1/conversations/{cid}/messages", user=a, json={"text": "hi"}).status_code
        == 403
    )
    assert (
        api.post(
            f"/v1/moderation/users/{b}/ban", user=mod, roles=MOD, json={"reason": "fraud"}
        ).get_json()["banned"]
        is True
    )
    assert (
        api.post(f"/v1/conversations/{cid}/messages", user=b, json={"text": "hi"}).status_code
        == 403
    )
    api.post(f"/v1/moderation/users/{b}/unban", user=mod, roles=MOD, json={"reason": "appeal"})
    api.post(f"/v1/moderation/users/{a}/unban", user=mod, roles=MOD, json={"reason": "ok"})
    assert (
        api.post(f"/v1/conversations/{cid}/messages", user=b, json={"text": "hi"}).status_code
        == 202
    )
    assert (
        api.post(f"/v1/conversations/{cid}/messages", user=a, json={"text": "hi"}).status_code
        == 202
    )
    assert (
        api.post(
            f"/v1/moderation/users/{a}/mute", user=b, json={"minutes": 5, "reason": "x"}
        ).status_code
        == 403
    )
    log = api.get(
        f"/v1/moderation/audit?target_type=user&target_id={b}", user=mod, roles=MOD
    ).get_json()["items"]
    assert [e["action"] for e in log] == ["user.unban", "user.ban"]


def test_the_same_text_in_many_conversations_is_held_as_flood(api: Api, live: Stack) -> None:
    """The copy that reaches the threshold (5 conversations) is held. Two worker children may
    moderate the copies in any order, so which copy that is is not fixed: exactly one."""
    spammer = uid("spam")
    convs = [api.conversation(spammer, uid()) for _ in range(5)]
    text = "Great deal!!! Contact me outside the app for 50% off " + uid()
    ids = [api.send(spammer, cid, text)["id"] for cid in convs]

    def states() -> list[dict]:
        seen = [api.get(f"/v1/messages/{mid}", user=spammer).get_json() for mid in ids]
        return seen if all(m["state"] != "pending" for m in seen) else []

    seen = wait_for(states, 30, what="all five copies moderated")
    held = [m for m in seen if m["state"] == "held"]
    assert len(held) == 1, [m["state"] for m in seen]
    assert "flood" in held[0]["moderation"]["labels"]
    assert sorted(m["state"] for m in seen) == ["delivered"] * 4 + ["held"]


def test_audit_log_pages_newest_first(api: Api, stack: Stack) -> None:
    mod = uid("mod")
    target = uid()
    for minutes in (1, 2, 3):
        api.post(
            f"/v1/moderation/users/{target}/mute",
            user=mod,
            roles=MOD,
            json={"minutes": minutes, "reason": f"r{minutes}"},
        )
    url = f"/v1/moderation/audit?target_id={target}&limit=2"
    first = api.get(url, user=mod, roles=MOD).get_json()
    second = api.get(url + f"&cursor={first['next_cursor']}", user=mod, roles=MOD).get_json()
    reasons = [e["reason"] for e in first["items"] + second["items"]]
    assert reasons == ["r3", "r2", "r1"] and second["next_cursor"] is None
