"""Flood detection's record (domain/flood.py): one script run per moderation batch, counting
each post by when it was posted, against the real Redis of the stack. The end-to-end hold is
in test_moderation_flow."""

from __future__ import annotations

from datetime import datetime, timedelta

from core.ids import utcnow
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
    flagged = flood.record_and_check(svc, _timed(posts))
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

    later = _timed([(spammer, text, uid("c"))], after=timedelta(seconds=1))
    again = flood.record_and_check(svc, later)  # a later batch
    assert again == [True]


def test_a_post_judged_again_gets_the_same_answer_whatever_ran_between(idle: Stack) -> None:
    """A judgement made before SQLite's write lock may be redone under it, after other tasks
    recorded the later copies: each copy still counts the conversations reached up to its own
    post, so only the threshold-th one is flagged, whichever order the batches ran in."""
    svc = idle.svc
    threshold = svc.settings.flood_conversations
    spammer, text = uid("spam"), f"Write to me outside the app {uid()}"
    posts = _timed([(spammer, text, uid("c")) for _ in range(threshold)])
    late_first = flood.record_and_check(svc, posts[-2:])  # the last copies judged first
    everything = flood.record_and_check(svc, posts)
    again = flood.record_and_check(svc, posts[1:])
    assert late_first == [False, False]  # the earlier copies were not recorded yet
    assert everything == [False] * (threshold - 1) + [True]
    assert again == everything[1:]


def test_nothing_is_recorded_for_a_batch_without_text(idle: Stack) -> None:
    sender = uid()
    posts = _timed([(sender, "", uid("c")), (None, "hi", uid("c"))])
    assert flood.record_and_check(idle.svc, posts) == [False, False]
    assert idle.svc.redis.keys(f"{flood.PREFIX}{sender}:*") == []


def _timed(
    posts: list[tuple[str | None, str, str]], after: timedelta = timedelta()
) -> list[tuple[str | None, str, str, datetime]]:
    """The posts as the stage passes them: each posted a millisecond after the one before."""
    start = utcnow() + after
    return [(*post, start + timedelta(milliseconds=i)) for i, post in enumerate(posts)]
