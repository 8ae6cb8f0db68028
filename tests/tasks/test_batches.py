"""The moderation stage takes what is waiting across conversations, and the fan-out delivers a
batch of conversations at once: still exactly once per recipient and in seq order, with real
workers (2 children) and with overlapping stage runs at the same moment, on both databases."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from sqlalchemy import func, select

from domain import fanout, moderation_stage
from domain.messages import MODERATE_TASK
from domain.search import index
from domain.search.candidates import candidates
from domain.search.text import parse
from models import DeliveryCursor, Message, Outbox
from tests.conftest import Stack, wait_for
from tests.factories import Api, delivered_ids, uid, wait_delivered

BATCH_LINE = re.compile(r"moderation batch: (\d+) verdict\(s\), (\d+) conversation\(s\)")


def _backlog(api: Api, conversations: int, per_conversation: int) -> dict[str, list[str]]:
    """Messages posted round-robin over fresh 3-member conversations: member → ids, in order."""
    convs = []
    for _ in range(conversations):
        a, b, c = uid(), uid(), uid()
        convs.append((api.conversation(a, b, c), (a, b, c)))
    expected: dict[str, list[str]] = {}
    for i in range(per_conversation):
        for cid, members in convs:
            mid = api.send(members[i % 3], cid, f"batch {i} in {cid[-6:]}")["id"]
            for user in members:
                expected.setdefault(user, []).append(mid)
    return expected


def _exactly_once_in_order(stack: Stack, expected: dict[str, list[str]]) -> None:
    for user, ids in expected.items():
        got = [m for m in delivered_ids(stack, user) if m in set(ids)]
        assert Counter(got) == Counter(ids), f"{user}: duplicates or losses"
        assert got == ids, f"{user}: not in seq order"


def _pending_moderate_rows(stack: Stack, ids: set[str]) -> int:
    with stack.svc.ReadSession() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(Outbox)
                .where(
                    Outbox.task == MODERATE_TASK,
                    Outbox.ref_id.in_(ids),
                    Outbox.done_at.is_(None),
                )
            )
            or 0
        )


def test_a_burst_across_many_conversations_lands_once_and_in_order(api: Api, stack: Stack) -> None:
    """240 messages in 24 conversations wait in the broker; a worker with 2 children starts:
    tasks take what waits across conversations (some batch spans several), and every member
    gets every message of theirs once, in seq order; every moderate outbox row is done."""
    stack.worker.stop()
    expected = _backlog(api, conversations=24, per_conversation=10)
    log_start = len(stack.worker.log()) if stack.worker.logfile.exists() else 0
    stack.worker.start(stack.app, concurrency=2)
    for user, ids in expected.items():
        wait_delivered(stack, user, ids, timeout=120)
    _exactly_once_in_order(stack, expected)
    every = {m for ids in expected.values() for m in ids}
    wait_for(lambda: _pending_moderate_rows(stack, every) == 0, 30, what="outbox rows done")
    spans = [int(m[2]) for m in BATCH_LINE.finditer(stack.worker.log()[log_start:]) if int(m[1])]
    assert spans and max(spans) > 1, f"no batch spanned two conversations: {spans}"


def _together(calls: list[Callable[[], None]]) -> None:
    """Run the calls in threads released at the same moment; re-raise the first failure."""
    start = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        start.wait()
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


def test_overlapping_stage_runs_at_the_same_moment_deliver_once_in_order(
    api: Api, stack: Stack
) -> None:
    """With no worker running, the real stage code runs in four threads at once, round after
    round: two moderation batches (one of them twice for the same message) and two fan-outs
    over overlapping sets of conversations in opposite orders. Nothing is lost, doubled or
    reordered, and nothing deadlocks."""
    stack.worker.stop()
    expected = _backlog(api, conversations=6, per_conversation=8)
    svc = stack.svc
    with svc.ReadSession() as s:
        every = {m for ids in expected.values() for m in ids}
        rows = list(
            s.execute(
                select(Message.id, Message.conversation_id)
                .where(Message.id.in_(every))
                .order_by(Message.created_at)
            )
        )
    cids = list(dict.fromkeys(cid for _, cid in rows))
    for n in range(0, len(rows), 4):
        (m1, c1), (m2, c2) = rows[n], rows[min(n + 3, len(rows) - 1)]
        moderate = moderation_stage.moderate_and_fan_out
        _together(
            [
                partial(moderate, svc, {m1: c1}),
                partial(moderate, svc, {m1: c1}),
                partial(moderate, svc, {m2: c2, m1: c1}),
                partial(fanout.drain_many, svc, cids[:4]),
                partial(fanout.drain_many, svc, list(reversed(cids[2:]))),
            ]
        )
    _together([partial(fanout.drain_many, svc, cids)] * 2)
    _exactly_once_in_order(stack, expected)
    assert _pending_moderate_rows(stack, every) == 0


def test_a_message_that_cannot_be_opened_does_not_stall_other_conversations(
    api: Api, stack: Stack
) -> None:
    """A batch spans conversations and takes the oldest waiting messages first, so a message
    whose text cannot be opened (its conversation deleted, keys shredded, before moderation; or
    a damaged ciphertext) would be in every later batch. It is left out: other conversations'
    messages get their verdicts and fan-out, and only its own task fails."""
    stack.worker.stop()
    a, b = uid(), uid()
    deleted, damaged, healthy = (api.conversation(a, b) for _ in range(3))
    api.send(a, deleted, "posted just before its conversation is deleted")
    resp = api.delete(f"/v1/conversations/{deleted}", user=a)
    assert resp.status_code in (200, 202), resp.get_json()
    bad = api.send(a, damaged, "this ciphertext gets damaged at rest")["id"]
    good = api.send(a, healthy, "this one must still get through")["id"]
    svc = stack.svc
    with svc.Session.begin() as s:
        row = s.get(Message, bad)
        assert row is not None and row.text_ct is not None
        row.text_ct = bytes(reversed(row.text_ct))
    moderation_stage.moderate_and_fan_out(svc, {good: healthy})
    assert good in delivered_ids(stack, b)
    with svc.ReadSession() as s:
        assert s.scalar(select(Message.moderation_action).where(Message.id == good)) == "allow"
    with pytest.raises(Exception):  # noqa: B017 - whatever the cipher raises, the task retries
        moderation_stage.moderate_and_fan_out(svc, {bad: damaged})
    resp = api.delete(f"/v1/conversations/{damaged}", user=a)  # leave nothing stuck behind
    assert resp.status_code in (200, 202), resp.get_json()


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)  # PostgreSQL judges under row locks
@pytest.mark.parametrize("meanwhile", ["another task", "the sender's delete"])
def test_a_batch_judged_before_the_lock_is_judged_again_when_a_row_changed_meanwhile(
    api: Api, stack: Stack, meanwhile: str
) -> None:
    """SQLite judges a batch before it takes the database's one write lock (opening the texts,
    the flood check, the rules), then checks under the lock that each row is as it was
    judged. A row that changed in between is not given the stale verdict: another task's
    verdict stands (and is not counted twice), and a deleted message is judged again on what
    is left of it (no text, so no masked spans of the text it no longer has)."""
    stack.worker.stop()
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "what the shit is this")["id"]
    svc = stack.svc
    with svc.ReadSession() as s:
        judged = moderation_stage._judge(svc, s.connection(), {mid: cid}, locks=False)
    assert [(v["mid"], v["action"]) for v in judged.verdicts] == [(mid, "mask")]
    assert judged.verdicts[0]["spans"]

    def row() -> tuple:
        with svc.ReadSession() as s:
            return tuple(
                s.execute(
                    select(
                        Message.moderation_action,
                        Message.moderation_spans,
                        Message.state,
                        Message.deleted_at,
                    ).where(Message.id == mid)
                ).one()
            )

    if meanwhile == "another task":
        moderation_stage.moderate_and_fan_out(svc, {mid: cid})
        before = row()
        assert before[0] == "mask" and before[2] == "delivered"
        taken = moderation_stage._written(svc, judged, {mid: cid})
        assert taken.verdicts == [] and row() == before
    else:
        assert api.delete(f"/v1/messages/{mid}", user=a).status_code == 200
        taken = moderation_stage._written(svc, judged, {mid: cid})
        action, spans, state, deleted_at = row()
        assert (action, spans, state) == ("allow", [], "pending") and deleted_at is not None
        assert taken.verdicts == [("allow", [])] and taken.to_fan_out == [cid]


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)  # PostgreSQL walks under row locks
@pytest.mark.parametrize(
    "meanwhile", ["a walk recorded part of it", "a walk went further", "a moderator rejected"]
)
def test_a_walk_made_before_the_lock_records_only_what_is_still_as_it_was_read(
    api: Api, stack: Stack, meanwhile: str
) -> None:
    """SQLite walks a conversation and appends its events before it takes the database's one
    write lock. Under the lock it records (the cursor, the delivered state) only what lies
    past the cursor as it is now, and only if those rows are as they were read; a
    conversation with a changed row is walked again under the lock. A later walk's cursor is
    never moved back, nothing is delivered twice or out of order, and a message rejected in
    between is never marked delivered."""
    stack.worker.stop()
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    first = api.send(a, cid, "the crane arrives at seven")["id"]
    svc = stack.svc

    def give_verdict(mid: str) -> None:
        with svc.ReadSession() as s:
            judged = moderation_stage._judge(svc, s.connection(), {mid: cid}, locks=False)
        moderation_stage._written(svc, judged, {mid: cid})

    def now() -> tuple[Any, ...]:
        """The cursor's seq, then each message's state in seq order."""
        with svc.ReadSession() as s:
            seq = s.scalar(
                select(DeliveryCursor.fanout_seq).where(DeliveryCursor.conversation_id == cid)
            )
            states = s.scalars(
                select(Message.state).where(Message.conversation_id == cid).order_by(Message.seq)
            ).all()
        return (seq, *states)

    give_verdict(first)
    walk, ahead = fanout._walked_before_the_lock(svc, [cid])
    assert walk.done == [first] and delivered_ids(stack, b) == [first]  # appended already
    if meanwhile == "a moderator rejected":
        resp = api.post(
            f"/v1/moderation/messages/{first}/reject",
            user=uid("mod"),
            roles=("moderator",),
            json={"reason": "off-platform contact"},
        )
        assert resp.status_code == 200, resp.get_json()
        again = fanout._recorded(svc, walk, ahead, None)
        assert now() == (0, "rejected")  # not delivered
        assert again == [cid]
        fanout.drain_many(svc, again)  # the walk under the lock
        assert now() == (1, "rejected")
        assert api.get(f"/v1/messages/{first}", user=b).status_code == 404
        expected = [first]  # in the stream, never shown: the hub renders what the row says
    else:
        second = api.send(a, cid, "the crane arrives at eight")["id"]
        expected = [first, second]
        if meanwhile == "a walk went further":
            moderation_stage.moderate_and_fan_out(svc, {second: cid})  # its verdict, a walk
            assert now() == (2, "delivered", "delivered")
            assert fanout._recorded(svc, walk, ahead, None) == []
        else:
            give_verdict(second)
            longer, longer_ahead = fanout._walked_before_the_lock(svc, [cid])
            assert longer.done == expected and fanout._recorded(svc, walk, ahead, None) == []
            assert now() == (1, "delivered", "pending")
            assert fanout._recorded(svc, longer, longer_ahead, None) == []  # from 1 on
        assert now() == (2, "delivered", "delivered")  # and not moved back to 1
    assert delivered_ids(stack, b) == expected
    assert _pending_moderate_rows(stack, set(expected)) == 0


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)  # PostgreSQL walks under row locks
@pytest.mark.parametrize("meanwhile", ["nothing", "an edit"])
def test_a_search_index_prepared_before_the_lock_is_written_only_if_its_rows_are_unchanged(
    api: Api, stack: Stack, meanwhile: str
) -> None:
    """SQLite prepares a walk's search index (texts opened, tokens, the postings rows to
    write) before the write lock, and writes it under the lock only if the postings rows it
    was planned on are unchanged. An edit committed in between rewrites them: the index is
    then prepared again under the lock, from the edited text, instead of the stale tokens
    overwriting the edit's."""
    stack.worker.stop()
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    svc = stack.svc
    earlier = api.send(a, cid, "warmup message")["id"]  # makes the conversation's index row
    moderation_stage.moderate_and_fan_out(svc, {earlier: cid})
    word, edited = uid("bulldozer").replace("-", ""), uid("excavator").replace("-", "")
    mid = api.send(a, cid, f"the {word} arrives at seven")["id"]
    with svc.ReadSession() as s:
        judged = moderation_stage._judge(svc, s.connection(), {mid: cid}, locks=False)
    moderation_stage._written(svc, judged, {mid: cid})
    walk, ahead = fanout._walked_before_the_lock(svc, [cid])
    assert ahead is not None and walk.done == [mid]
    if meanwhile == "an edit":
        resp = api.patch(f"/v1/messages/{mid}", user=a, json={"text": f"the {edited} came"})
        assert resp.status_code == 200, resp.get_json()
    assert fanout._recorded(svc, walk, ahead, None) == []

    def found(q: str) -> list[str]:
        resp = api.get("/v1/search/messages", user=b, query_string={"q": q})
        assert resp.status_code == 200, resp.get_json()
        return [item["message"]["id"] for item in resp.get_json()["items"]]

    if meanwhile == "an edit":
        assert found(edited) == [mid]
        assert found(word) == [], "the tokens prepared before the edit were written"
    else:
        assert found(word) == [mid]


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_a_search_index_prepared_before_the_lock_is_not_written_for_a_walk_that_narrowed(
    api: Api, stack: Stack
) -> None:
    """A moderator rejects a message after the walk read it and before the lock: its
    conversation is left out of what is recorded (walked again under the lock), and the index
    prepared for the whole walk must not be written, or the rejected message's tokens would be
    indexed past a cursor that never reached it. Its postings rows were not touched, so only
    the check that the walk recorded is the one prepared for catches it."""
    stack.worker.stop()
    a, b, mod = uid(), uid(), uid("mod")
    kept, narrowed = api.conversation(a, b), api.conversation(a, b)
    svc = stack.svc
    warm = {api.send(a, c, "warmup message")["id"]: c for c in (kept, narrowed)}
    moderation_stage.moderate_and_fan_out(svc, warm)  # makes both conversations' index rows
    word, gone = uid("bulldozer").replace("-", ""), uid("excavator").replace("-", "")
    mid = api.send(a, kept, f"the {word} arrives at seven")["id"]
    rejected = api.send(a, narrowed, f"the {gone} came")["id"]
    own = {mid: kept, rejected: narrowed}
    with svc.ReadSession() as s:
        judged = moderation_stage._judge(svc, s.connection(), own, locks=False)
    moderation_stage._written(svc, judged, own)
    walk, ahead = fanout._walked_before_the_lock(svc, [kept, narrowed])
    assert ahead is not None and sorted(walk.done) == sorted(own)
    reject = api.post(
        f"/v1/moderation/messages/{rejected}/reject",
        user=mod,
        roles=("moderator",),
        json={"reason": "off-platform contact"},
    )
    assert reject.status_code == 200, reject.get_json()
    assert fanout._recorded(svc, walk, ahead, None) == [narrowed]

    resp = api.get("/v1/search/messages", user=b, query_string={"q": word})
    assert [item["message"]["id"] for item in resp.get_json()["items"]] == [mid]
    with svc.ReadSession() as s:
        ref = index.locked(s.connection(), [narrowed], create=False)[narrowed]
        dk_id = s.scalar(select(Message.key_id).where(Message.id == rejected))
        assert dk_id is not None
        hits = candidates(svc, s, [(narrowed, ref, dk_id)], sorted(parse(gone).needs()))
    assert hits == [], "the rejected message was indexed"
