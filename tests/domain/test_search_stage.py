"""The index stage run by the fan-out itself (#15, #17): a message is searchable once its
fan-out commits, with no index task of its own; `PARLEY_SEARCH_INDEX=false` writes no index
and answers searches with a problem. Real SQLite and PostgreSQL; the stages run in this
process (no worker), as a worker child runs them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select, update

from core.config import with_overrides
from domain import fanout, moderation_stage, outbox
from domain.search.stage import INDEX_TASK
from models import Message, Outbox, SearchConversation
from tests.conftest import Stack
from tests.domain.test_search import hits, search, stored, word
from tests.factories import Api, delivered_ids, uid


@pytest.fixture
def search_off(idle: Stack) -> Iterator[Stack]:
    """The stack's app with the index turned off, restored afterwards."""
    svc = idle.svc
    idle.app.extensions["parley"] = replace(
        svc, settings=with_overrides(svc.settings, search_index=False)
    )
    try:
        yield idle
    finally:
        idle.app.extensions["parley"] = svc


def test_the_fan_out_writes_the_index_in_its_own_transaction(api: Api, idle: Stack) -> None:
    a, b, c = uid(), uid(), uid()
    one, two = api.conversation(a, b), api.conversation(a, c)
    words = {one: word(), two: word()}
    sent = {cid: api.send(a, cid, f"see you {w} soon")["id"] for cid, w in words.items()}
    assert hits(api, b, words[one]) == []  # not moderated yet: nothing indexed
    moderation_stage.moderate_and_fan_out(idle.svc, {sent[one]: one})  # takes both
    assert [h["message"]["id"] for h in hits(api, b, words[one])] == [sent[one]]
    assert [h["message"]["id"] for h in hits(api, c, words[two])] == [sent[two]]
    assert hits(api, c, words[one]) == []
    with idle.svc.Session() as s:
        queued = s.scalars(select(Outbox.ref_id).where(Outbox.task == INDEX_TASK)).all()
    assert not set(queued) & set(sent.values())  # no index task: the fan-out wrote it


def test_with_the_index_off_nothing_is_indexed_and_search_says_so(
    api: Api, search_off: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, f"hidden {word()}")["id"]
    moderation_stage.moderate_and_fan_out(search_off.svc, {mid: cid})
    assert stored(search_off, cid) == {}
    resp = search(api, b, q="hidden")
    assert resp.status_code == 404
    assert resp.content_type == "application/problem+json"
    assert "turned off" in resp.get_json()["detail"]


def test_an_index_that_cannot_be_written_never_holds_up_delivery(api: Api, idle: Stack) -> None:
    """A message whose stored text no longer opens (a damaged row) after its verdict: the
    fan-out cannot prepare its index, delivers the message anyway, writes none of the index
    and leaves it to the index task through the outbox."""
    svc = idle.svc
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, f"damaged {word()}")["id"]
    with svc.Session.begin() as s:
        moderation_stage.moderate_waiting(svc, s, {mid: cid})  # the verdict, no fan-out yet
    with svc.Session() as s:
        sealed = s.scalar(select(Message.text_ct).where(Message.id == mid))
    assert sealed is not None
    damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])
    try:
        with svc.Session.begin() as s:
            s.execute(update(Message).where(Message.id == mid).values(text_ct=damaged))
        fanout.drain(svc, cid)
        assert mid in delivered_ids(idle, b)
        with svc.Session() as s:
            state = s.scalar(select(Message.state).where(Message.id == mid))
            left = s.scalars(
                select(Outbox.args).where(Outbox.task == INDEX_TASK, Outbox.ref_id == mid)
            ).all()
        assert state == "delivered"
        assert left == [[cid, [mid]]]
        assert stored(idle, cid) == {}
    finally:  # leave nothing for the shared stack's worker to retry
        with svc.Session.begin() as s:
            s.execute(update(Message).where(Message.id == mid).values(text_ct=sealed))
            outbox.mark_done(s, [mid], INDEX_TASK)


def test_a_conversation_with_a_large_index_reference_is_indexed_and_found(
    api: Api, idle: Stack
) -> None:
    """Index references are integers without a small bound (an install with millions of
    conversations): the reads of a conversation's postings rows must find its rows whatever
    its reference, batch after batch."""
    svc = idle.svc
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    with svc.Session.begin() as s:
        s.add(SearchConversation(ref=2**30 + 7, conversation_id=cid))
    tag = word()
    sent = []
    for i in range(3):  # three fan-outs: each rewrites the rows the one before wrote
        mid = api.send(a, cid, f"{tag} large {i}")["id"]
        moderation_stage.moderate_and_fan_out(svc, {mid: cid})
        sent.append(mid)
    with svc.Session() as s:
        left = s.scalars(select(Outbox.ref_id).where(Outbox.task == INDEX_TASK)).all()
    assert not set(left) & set(sent)  # written by the fan-outs, none left to the index task
    assert {h["message"]["id"] for h in hits(api, b, tag)} == set(sent)
