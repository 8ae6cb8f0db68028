"""POST /messages on a real gunicorn gevent web process, where group commit gathers the
greenlets of concurrent requests into one transaction (domain/group_commit.py)."""

from __future__ import annotations

import re
import threading
from typing import Any

from sqlalchemy import select

from models import Message
from tests.conftest import Stack, wait_for
from tests.factories import Api, delivered_ids, uid, wait_delivered
from tests.live_server import running_node


def test_concurrent_posts_on_gunicorn_each_get_their_own_message_once_and_in_order(
    api: Api, stack: Stack
) -> None:
    """16 threads post 6 messages each over 4 conversations at once, and a stranger's POST
    among them: every message is stored once, every answer carries its own text and
    client_msg_id, seqs are gap-free per conversation and follow each sender's own order,
    the stranger gets 404, and repeating a request returns its message again."""
    users = [uid() for _ in range(4)]
    cids = [api.conversation(users[0], *users[1:]) for _ in range(4)]
    tokens = [api.token(u) for u in users]
    stranger = api.token(uid())
    answers: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    refused: list[int] = []
    with running_node(stack, "ingest") as node:
        start = threading.Barrier(16)

        def sender(k: int) -> None:
            start.wait()
            for n in range(6):
                body = {"text": f"from {k}: {n}", "client_msg_id": f"g-{k}-{n}"}
                answers[k, n] = node.request(
                    "POST", f"/v1/conversations/{cids[k % 4]}/messages", tokens[k % 4], body
                )
                if k == 5 and n == 2:
                    refused.append(
                        node.request(
                            "POST", f"/v1/conversations/{cids[0]}/messages", stranger, body
                        )[0]
                    )

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        again = node.request(
            "POST",
            f"/v1/conversations/{cids[1]}/messages",
            tokens[1],
            {
                "text": "from 1: 0",
                "client_msg_id": "g-1-0",
            },
        )
        log = node.log()
    assert refused == [404]
    assert len(answers) == 96
    for (k, n), (code, got) in answers.items():
        assert code == 202, got
        assert (got["text"], got["client_msg_id"], got["conversation_id"]) == (
            f"from {k}: {n}",
            f"g-{k}-{n}",
            cids[k % 4],
        )
    assert again[0] == 200 and again[1]["id"] == answers[1, 0][1]["id"]
    with stack.svc.Session() as s:
        for cid in cids:
            stored = {
                mid: seq
                for mid, seq in s.execute(
                    select(Message.id, Message.seq).where(Message.conversation_id == cid)
                )
            }
            assert sorted(stored.values()) == list(range(1, 25))
            mine = {g["id"]: g["seq"] for _, g in answers.values() if g["conversation_id"] == cid}
            assert mine == stored
    for k in range(16):  # one sender's messages keep its order
        seqs = [answers[k, n][1]["seq"] for n in range(6)]
        assert seqs == sorted(seqs)
    batched = sum(
        int(n) for n in re.findall(r"(\d+) message\(s\) accepted in one transaction", log)
    )
    assert batched == 96


def test_a_batch_of_concurrent_posts_is_moderated_by_one_task_and_every_message_delivered(
    api: Api, live: Stack
) -> None:
    """The web sends moderate tasks that each name a group-commit batch's messages or more
    (batches that commit while a publish is in flight leave together), not one task per
    message: the worker runs at most as many batch tasks as the web committed batches, their
    request ids name every request, no per-message task runs, and every message reaches the
    recipient once, in seq order."""
    senders, receiver = [uid() for _ in range(4)], uid()  # 15 posts each: under the rate limit
    cids = [api.conversation(sender, receiver) for sender in senders]
    tokens = [api.token(sender) for sender in senders]
    trace = uid("batch")  # in each request id, so the stage lines of these tasks can be told
    ids: dict[tuple[int, int], str] = {}
    with running_node(live, "ingest-batches") as node:
        start = threading.Barrier(12)

        def post(k: int) -> None:
            start.wait()
            for n in range(5):
                code, got = node.request(
                    "POST",
                    f"/v1/conversations/{cids[k % 4]}/messages",
                    tokens[k % 4],
                    {"text": f"{k}.{n}"},
                    {"X-Request-ID": f"{trace}-{k}-{n}"},
                )
                ids[k, n] = got["id"] if code == 202 else f"refused: {code} {got}"

        threads = [threading.Thread(target=post, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        log = node.log()
    assert len(ids) == 60
    assert not [i for i in ids.values() if i.startswith("refused")], ids
    batches = re.findall(r"(\d+) message\(s\) accepted in one transaction", log)
    assert sum(int(n) for n in batches) == 60
    assert len(batches) < 60, "no two posts shared a batch: the test shows nothing"
    with live.svc.ReadSession() as s:
        by_seq: dict[str, int] = {
            mid: seq
            for mid, seq in s.execute(
                select(Message.id, Message.seq).where(Message.id.in_(list(ids.values())))
            )
        }
    wait_delivered(live, receiver, list(ids.values()), timeout=60)
    got = [m for m in delivered_ids(live, receiver) if m in by_seq]
    assert sorted(got) == sorted(ids.values()), "a message missing or delivered twice"
    for k in range(4):  # in seq order within each conversation
        conv = {ids[j, n] for j in range(k, 12, 4) for n in range(5)}
        seqs = [by_seq[m] for m in got if m in conv]
        assert seqs == sorted(seqs)

    def batch_tasks_ran() -> list[str] | None:
        ran = [
            line
            for line in live.worker.log().splitlines()
            if "stage tasks.moderate.moderate_messages " in line and f"request_id={trace}-" in line
        ]
        named = set(re.findall(rf"{trace}-\d+-\d+", "\n".join(ran)))
        return ran if len(named) == 60 else None

    ran = wait_for(batch_tasks_ran, 30, what="the batch tasks' stage lines, naming every request")
    assert len(ran) <= len(batches)
    assert not [
        line
        for line in live.worker.log().splitlines()
        if "stage tasks.moderate.moderate_message " in line and trace in line
    ]
