"""The hub's database side (domain/live.py): its batch read gives the same reactions as the
REST view, and its delivered cursors only ever move forward."""

from __future__ import annotations

from sqlalchemy import select

from domain.live import render_batch, save_delivered
from domain.message_actions import reactions_for
from models import Participant
from tests.conftest import Stack, wait_for
from tests.factories import Api, uid, wait_delivered


def test_a_batch_read_counts_reactions_in_order_of_first_use_and_knows_each_viewers_own(
    api: Api, live: Stack
) -> None:
    a, b, c = uid(), uid(), uid()
    cid = api.conversation(a, b, c)
    mid = api.send(a, cid, "react to me")["id"]
    quiet = api.send(a, cid, "nobody reacts to me")["id"]
    wait_delivered(live, b, [mid, quiet])
    wait_for(  # reactions are for delivered messages: the fan-out commits after it appends
        lambda: api.get(f"/v1/messages/{mid}", user=a).get_json()["state"] == "delivered",
        30,
        what="the fan-out's commit",
    )
    for user, emoji in ((a, "👍"), (b, "🎉"), (b, "👍"), (c, "❤️"), (c, "👍")):
        resp = api.put(f"/v1/messages/{mid}/reactions/{emoji}", user=user)
        assert resp.status_code == 200, resp.get_json()
    with live.svc.ReadSession() as s:
        batch = render_batch(s, [mid, quiet], [a, b])
        assert batch.shared[mid] == [
            {"emoji": "👍", "count": 3, "me": False},
            {"emoji": "🎉", "count": 1, "me": False},
            {"emoji": "❤️", "count": 1, "me": False},
        ]
        assert batch.shared[mid] == reactions_for(s, [mid], None)[mid]
        assert quiet not in batch.shared
        assert batch.mine[(b, mid)] == {"🎉", "👍"}
        assert batch.mine[(a, mid)] == {"👍"}
        assert (c, mid) not in batch.mine  # not a viewer of this batch


def test_delivered_cursors_move_forward_for_the_users_named_and_never_back(
    api: Api, stack: Stack
) -> None:
    a, b, c = uid(), uid(), uid()
    group = api.conversation(a, b, c)
    direct = api.conversation(a, b)

    def cursors() -> dict[tuple[str, str], int]:
        with stack.svc.ReadSession() as s:
            rows = s.execute(
                select(
                    Participant.conversation_id, Participant.user_id, Participant.delivered_seq
                ).where(Participant.conversation_id.in_([group, direct]))
            )
            return {(cid, user): seq for cid, user, seq in rows}

    with stack.svc.Session.begin() as s:
        save_delivered(s, {(group, b): 5, (group, c): 5, (direct, b): 2})
    with stack.svc.Session.begin() as s:  # older news for b, newer for c: only c moves
        save_delivered(s, {(group, b): 3, (group, c): 7})
    assert cursors() == {
        (group, a): 0,
        (group, b): 5,
        (group, c): 7,
        (direct, a): 0,
        (direct, b): 2,
    }
