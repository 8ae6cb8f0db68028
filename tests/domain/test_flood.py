"""Flood detection's record (domain/flood.py): one script run per moderation batch, in the
batch's order, each post answered once, against the real Redis of the stack. The end-to-end
hold is in test_moderation_flow."""

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
    flagged = flood.record_and_check(svc, _ids(posts))
    mine = [s == spammer and bool(t.strip()) for s, t, _ in posts]
    spammer_flags = [f for f, counted in zip(flagged, mine, strict=True) if counted]
    # the copies to distinct conversations reach the threshold at the threshold-th one; the
    # repeat into the first conversation adds no conversation
    assert spammer_flags == [False] * threshold + [True, True]
    assert flagged[1:4] == [False, False, False]

    keys = sorted(svc.redis.keys(f"{flood.PREFIX}{spammer}:*"))  # the set and its memo
    assert len(keys) == 2 and keys[1] == keys[0] + flood.MEMO.encode()
    assert text.split()[-1].encode() not in keys[0]  # a keyed hash, no text
    assert svc.redis.zcard(keys[0]) == threshold + 1
    assert all(0 < svc.redis.ttl(k) <= svc.settings.flood_window_s for k in keys)

    # later batches: a copy to another conversation, and one to the first conversation again
    again = flood.record_and_check(
        svc, _ids([(spammer, text, uid("c")), (spammer, text, convs[0])])
    )
    assert again == [True, True]


def test_a_post_judged_again_gets_its_first_answer(idle: Stack) -> None:
    """A judgement made before SQLite's write lock may be redone under it after other tasks
    recorded more copies, and two tasks may judge one post: each post keeps the count it had
    when first recorded, so exactly one copy reaches the threshold however the copies are
    spread over batches and however often they are judged."""
    svc = idle.svc
    threshold = svc.settings.flood_conversations
    spammer, text = uid("spam"), f"Write to me outside the app {uid()}"
    posts = _ids([(spammer, text, uid("c")) for _ in range(threshold)])
    late_first = flood.record_and_check(svc, posts[-2:])  # the last copies judged first
    everything = flood.record_and_check(svc, posts)  # judged again with the others
    again = flood.record_and_check(svc, posts[1:])
    assert late_first == [False, False]
    assert everything == [False] * (threshold - 3) + [True] + late_first
    assert again == everything[1:]


def test_nothing_is_recorded_for_a_batch_without_text(idle: Stack) -> None:
    sender = uid()
    posts = _ids([(sender, "", uid("c")), (None, "hi", uid("c"))])
    assert flood.record_and_check(idle.svc, posts) == [False, False]
    assert idle.svc.redis.keys(f"{flood.PREFIX}{sender}:*") == []


def _ids(posts: list[tuple[str | None, str, str]]) -> list[tuple[str | None, str, str, str]]:
    """The posts as the stage passes them: each with its own message id."""
    return [(*post, uid("m")) for post in posts]
