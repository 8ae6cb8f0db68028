"""Flood detection's record (domain/flood.py): one script run per moderation batch, in the
batch's order, against the real Redis of the stack. The end-to-end hold is in
test_moderation_flow."""

from __future__ import annotations

from domain import flood
from tests.conftest import Stack
from tests.factories import uid


def test_a_batch_counts_in_order_and_flags_from_the_threshold_on(idle: Stack) -> None:
    svc = idle.svc
    threshold = svc.settings.flood_conversations
    spammer, other = uid("spam"), uid()
    text = f"Cheap deal, write to me outside the app {uid()}"
    convs = [uid("c") for _ in range(threshold + 1)]
    posts: list[tuple[str | None, str, str]] = [(spammer, text, c) for c in convs]
    posts.insert(1, (other, text, convs[0]))  # another sender: counted apart
    posts.insert(2, (spammer, "   ", convs[1]))  # no text: never counted
    posts.insert(3, (None, text, convs[1]))  # a system message: never counted
    posts.insert(4, (spammer, text.upper(), convs[0]))  # the same text again, same conversation
    flagged = flood.record_and_check(svc, posts)
    mine = [s == spammer and bool(t.strip()) for s, t, _ in posts]
    spammer_flags = [f for f, counted in zip(flagged, mine, strict=True) if counted]
    # the copies to distinct conversations reach the threshold at the threshold-th one; the
    # repeat into the first conversation adds no conversation
    assert spammer_flags == [False] * threshold + [True, True]
    assert flagged[1:4] == [False, False, False]

    keys = svc.redis.keys(f"{flood.PREFIX}{spammer}:*")
    assert len(keys) == 1 and text.split()[-1].encode() not in keys[0]  # a keyed hash, no text
    assert svc.redis.zcard(keys[0]) == threshold + 1
    assert 0 < svc.redis.ttl(keys[0]) <= svc.settings.flood_window_s

    again = flood.record_and_check(svc, [(spammer, text, uid("c"))])  # a later batch
    assert again == [True]


def test_nothing_is_recorded_for_a_batch_without_text(idle: Stack) -> None:
    sender = uid()
    assert flood.record_and_check(idle.svc, [(sender, "", uid("c")), (None, "hi", uid("c"))]) == [
        False,
        False,
    ]
    assert idle.svc.redis.keys(f"{flood.PREFIX}{sender}:*") == []
