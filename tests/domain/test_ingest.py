"""Group commit of POSTs (domain/group_commit.py, domain/ingest.py): concurrent requests share a
transaction, and each still gets its own answer, its own error, a gap-free seq in arrival
order, and the same message again for the same client_msg_id."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy import text as sql
from sqlalchemy.exc import NoResultFound

from core.ids import utcnow
from domain import ingest_seqs
from domain.group_commit import GroupCommit, Item
from domain.messages import MODERATE_TASK
from models import Conversation, DataKey, Message, Outbox
from tests.conftest import Stack
from tests.factories import Api, uid


def test_concurrent_submits_share_batches_and_each_gets_its_own_outcome() -> None:
    """20 threads submit at once while a batch is being written: the rest queue up and go in
    the next batch; item 7's own error reaches item 7 only."""
    batches: list[list[int]] = []

    def write(batch: Sequence[Item[int]]) -> None:
        batches.append([item.value for item in batch])
        time.sleep(0.05)  # the transaction: others arrive meanwhile
        for item in batch:
            if item.value == 7:
                item.answer(error=ValueError("seven is refused"))
            else:
                item.answer(item.value * 10)

    gc: GroupCommit[int] = GroupCommit(write)
    start = threading.Barrier(20)
    got: dict[int, Any] = {}

    def submit(n: int) -> None:
        start.wait()
        try:
            got[n] = gc.submit(n)
        except ValueError as exc:
            got[n] = str(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == {n: ("seven is refused" if n == 7 else n * 10) for n in range(20)}
    assert sorted(n for batch in batches for n in batch) == list(range(20))
    assert len(batches) < 20 and max(len(b) for b in batches) > 1


def test_a_failed_write_answers_every_item_of_its_batch_and_the_next_batch_goes_on() -> None:
    calls: list[list[str]] = []

    def write(batch: Sequence[Item[str]]) -> None:
        calls.append([item.value for item in batch])
        if any(item.value == "boom" for item in batch):
            raise RuntimeError("the database went away")
        for item in batch:
            item.answer(item.value.upper())

    gc: GroupCommit[str] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="went away"):
        gc.submit("boom")
    assert gc.submit("fine") == "FINE"  # a request alone: its own batch, no waiting
    assert calls == [["boom"], ["fine"]]


def _post(stack: Stack, token: str, cid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = stack.app.test_client().post(
        f"/v1/conversations/{cid}/messages",
        headers={"Authorization": f"Bearer {token}"},
        json=body,
    )
    return resp.status_code, resp.get_json()


def _burst(
    stack: Stack, calls: list[tuple[str, str, dict[str, Any]]]
) -> list[tuple[int, dict[str, Any]]]:
    """POST all `calls` (token, cid, body) at once, one thread each; the answers in order."""
    out: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def one(k: int) -> None:
        start.wait()
        out[k] = _post(stack, *calls[k])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_a_burst_over_several_conversations_stores_each_message_once_with_gap_free_seqs(
    api: Api, stack: Stack
) -> None:
    """48 POSTs at once over 3 conversations, with refused requests mixed in (a non-member, a
    reply to an unknown message, an observer): each refused one gets its own problem, the
    others 202 with their own text, seqs 1..16 in every conversation, one outbox row each."""
    users = [uid() for _ in range(4)]
    observer, stranger = uid(), uid()
    cids = [api.conversation(users[0], *users[1:]) for _ in range(3)]
    added = api.post(
        f"/v1/conversations/{cids[0]}/members",
        user=users[0],
        json={"user_ids": [observer], "role": "observer"},
    )
    assert added.status_code in (200, 201), added.get_json()
    tokens = {u: api.token(u) for u in [*users, observer, stranger]}
    calls = [
        (tokens[users[k % 4]], cids[k % 3], {"text": f"m{k}", "client_msg_id": f"burst-{k}"})
        for k in range(48)
    ]
    bad = [
        (tokens[stranger], cids[0], {"text": "let me in"}),
        (tokens[users[1]], cids[1], {"text": "re", "reply_to": "01NOTAMESSAGE00000000000000"}),
        (tokens[observer], cids[0], {"text": "I only watch"}),
    ]
    answers = _burst(stack, calls[:20] + bad + calls[20:])
    good = answers[:20] + answers[23:]
    assert [a[0] for a in answers[20:23]] == [404, 422, 403]
    assert all(body["status"] == code for code, body in answers[20:23])
    for (_, cid, body), (code, got) in zip(calls, good, strict=True):
        assert code == 202, got
        assert (got["text"], got["client_msg_id"], got["conversation_id"]) == (
            body["text"],
            body["client_msg_id"],
            cid,
        )
    with stack.svc.Session() as s:
        for cid in cids:
            rows = s.execute(
                select(Message.seq, Message.id).where(Message.conversation_id == cid)
            ).all()
            assert sorted(seq for seq, _ in rows) == list(range(1, 17))
            answered = {
                got["id"]: got["seq"] for code, got in good if got["conversation_id"] == cid
            }
            assert answered == {mid: seq for seq, mid in rows}
        outbox = s.scalar(
            select(func.count())
            .select_from(Outbox)
            .where(Outbox.ref_id.in_([got["id"] for _, got in good]), Outbox.task == MODERATE_TASK)
        )
        assert outbox == 48


def test_a_batch_reserves_each_conversations_seqs_and_names_its_data_key(
    api: Api, stack: Stack
) -> None:
    """A batch's reservations in one statement: each conversation gets its own last seq and
    data key; a conversation gone fails the batch."""
    a, b = uid(), uid()
    cids = sorted(api.conversation(a, b) for _ in range(3))
    api.send(a, cids[1], "its first message makes its data key")
    with stack.svc.ReadSession() as s:  # stored in the post's transaction, not only cached
        key = s.scalar(select(Conversation.data_key_id).where(Conversation.id == cids[1]))
        assert key is not None and s.get(DataKey, key) is not None
    statements: list[str] = []

    def on_execute(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(stack.svc.engine, "before_cursor_execute", on_execute)
    try:
        with stack.svc.Session.begin() as s:
            got = ingest_seqs.reserve(
                s.connection(), {cids[0]: 2, cids[1]: 3, cids[2]: 1}, utcnow()
            )
    finally:
        event.remove(stack.svc.engine, "before_cursor_execute", on_execute)
    assert len(statements) == 1
    assert list(got) == cids
    assert [seq for seq, _ in got.values()] == [2, 4, 1]
    assert got[cids[1]][1] is not None and got[cids[0]][1] is None and got[cids[2]][1] is None
    with pytest.raises(NoResultFound), stack.svc.Session.begin() as s:
        ingest_seqs.reserve(s.connection(), {cids[0]: 5, "01NOSUCHCONVERSATION000000": 1}, utcnow())
    with stack.svc.Session.begin() as s:  # the failed batch reserved nothing
        assert ingest_seqs.reserve(s.connection(), {cids[0]: 1}, utcnow())[cids[0]][0] == 3


@pytest.mark.parametrize("stack", ["postgres"], indirect=True)
def test_a_batch_waiting_for_a_conversation_holds_no_later_one(api: Api, stack: Stack) -> None:
    """Row locks in id order: a batch over two conversations, stopped at the first by another
    writer, has not locked the second, so two batches never wait on each other in a cycle.
    The first row is updated beforehand, which puts its live version after the second's on
    disk, where a scan in table order would meet the second first."""
    a, b = uid(), uid()
    first, second = sorted(api.conversation(a, b) for _ in range(2))
    engine = stack.svc.engine
    with engine.begin() as conn:  # the first row's live version now lies after the second's
        ingest_seqs.reserve(conn, {first: 1}, utcnow())
    with engine.connect() as holder, holder.begin():
        ingest_seqs.reserve(holder, {first: 1}, utcnow())  # holds the first row until the end
        got: dict[str, tuple[int, str | None]] = {}

        def batch() -> None:
            with engine.begin() as conn:
                # given out of order: the statement itself takes the locks in id order
                got.update(ingest_seqs.reserve(conn, {second: 1, first: 1}, utcnow()))

        worker = threading.Thread(target=batch)
        worker.start()
        waiting = sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%unnest%' AND pid <> pg_backend_pid()"
        )

        def batches_waiting() -> int:  # a transaction of its own: pg_stat_activity is
            with engine.connect() as probe:  # read once per transaction
                return int(probe.execute(waiting).scalar_one())

        deadline = time.monotonic() + 10
        while not batches_waiting() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batches_waiting() == 1
        with engine.begin() as probe:  # NOWAIT: fails at once if the waiting batch holds it
            locked = select(Conversation.id).where(Conversation.id == second)
            assert probe.execute(locked.with_for_update(nowait=True)).scalar_one() == second
    worker.join(10)
    assert {cid: seq for cid, (seq, _) in got.items()} == {first: 3, second: 1}


def test_the_same_client_msg_id_twice_in_one_burst_is_one_message(api: Api, stack: Stack) -> None:
    """Six copies of one request (a client retrying hard) and six other messages at once:
    the copies all answer with the same message, stored once; one of them is the 202."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    token = api.token(a)
    same = (token, cid, {"text": "only once", "client_msg_id": "retry-1"})
    others = [(token, cid, {"text": f"other {k}"}) for k in range(6)]
    answers = _burst(stack, [same, *others[:3], same, same, *others[3:], same, same, same])
    copies = [answers[k] for k in (0, 4, 5, 9, 10, 11)]
    assert len({got["id"] for _, got in copies}) == 1
    assert sorted(code for code, _ in copies) == [200, 200, 200, 200, 200, 202]
    with stack.svc.Session() as s:
        stored = s.scalars(select(Message.seq).where(Message.conversation_id == cid)).all()
        assert sorted(stored) == list(range(1, 8))
        assert (
            s.scalar(
                select(func.count()).select_from(Message).where(Message.client_msg_id == "retry-1")
            )
            == 1
        )


def test_the_same_client_msg_id_in_another_conversation_is_a_conflict_even_in_one_burst(
    api: Api, stack: Stack
) -> None:
    """Three copies to one conversation and three to another, at once: the first committed
    wins (202), its copies get it again (200), the other conversation's get 409."""
    a = uid()
    one, two = api.conversation(a, uid()), api.conversation(a, uid())
    token = api.token(a)
    x = (token, one, {"text": "x", "client_msg_id": "c-1"})
    y = (token, two, {"text": "y", "client_msg_id": "c-1"})
    answers = _burst(stack, [x, y] * 3)
    assert sorted(code for code, _ in answers) == [200, 200, 202, 409, 409, 409]
    winners = {got["conversation_id"] for code, got in answers if code in (200, 202)}
    assert len(winners) == 1
    assert len({got["id"] for code, got in answers if code in (200, 202)}) == 1


def test_the_answer_to_a_post_is_the_message_as_its_sender_reads_it(api: Api, idle: Stack) -> None:
    """The POST's answer is built from the request, not read back: it must equal what GET
    gives the sender while the message waits for moderation (system messages by API key too)."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    posted = api.post(
        f"/v1/conversations/{cid}/messages",
        user=a,
        json={"text": "hello there", "client_msg_id": "shape-1", "metadata": {"k": "v"}},
    )
    assert posted.status_code == 202
    read = api.get(f"/v1/messages/{posted.get_json()['id']}", user=a)
    assert posted.get_json() == read.get_json()
    key = api.api_key()
    system = api.post(
        f"/v1/conversations/{cid}/messages", key=key, json={"type": "system", "text": "joined"}
    )
    assert system.status_code == 202, system.get_json()
    assert (
        system.get_json() == api.get(f"/v1/messages/{system.get_json()['id']}", key=key).get_json()
    )
