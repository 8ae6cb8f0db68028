"""Posting messages through group commit (domain/group_commit.py), in Core SQL.

The POSTs a web process serves at the same moment share one transaction: one statement looks
up what every request of the batch needs (its conversation, the caller's membership and
standing, an earlier message with the same client_msg_id, the reply target), and each is
judged by domain/messages.post's rules (domain/ingest_checks.py); `UPDATE … RETURNING`
reserves each conversation's seqs for the batch (domain/ingest_seqs.py: consecutive, in
arrival order, gap-free; one statement for the lot, which on PostgreSQL locks in id order); then
one multi-row INSERT of the messages and one of their outbox rows, and one commit. A request
whose own input is refused gets its own error and writes nothing, so it costs the others
nothing. Every request is answered after the commit; the batch's moderate task goes to the
broker from a sender thread (domain/ingest_publisher.py), off the requests' path, with
whatever else committed meanwhile (the moderation stage takes what waits, across
conversations, anyway); the sweeper re-sends, one task per outbox row, any message the broker
lost.

Messages that carry attachments take the ORM path (domain/messages.post), one transaction each:
their attachments are locked and claimed with the message. A batch that hits a unique
constraint (a concurrent request elsewhere with the same client_msg_id) is retried one request
per transaction, where the loser finds the winner's message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from weakref import WeakKeyDictionary

from sqlalchemy import (
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core import logs
from core.ids import iso, new_id, utcnow
from core.services import Services
from domain import fanout, ingest_seqs
from domain.errors import DomainError
from domain.group_commit import GroupCommit, Item
from domain.ingest_checks import Posting, Replay, check, lookup, other_conversation
from domain.ingest_publisher import Publisher
from domain.keys import create_data_key, message_aad
from domain.messages import MODERATE_TASK
from domain.principals import Principal
from models import Conversation, Message, Outbox

logger = logging.getLogger(__name__)

LAG_READ_S = 0.02  # how often a web process reads the pipeline's lag, at most
WINDOW_S = 0.001  # at most, a leader lets the gevent loop run others to their submit
MAX_BATCH = 64

_conv = cast(Table, Conversation.__table__)
_msg = cast(Table, Message.__table__)
_outbox = cast(Table, Outbox.__table__)

_SET_KEY = update(_conv).where(_conv.c.id == bindparam("conv")).values(data_key_id=bindparam("dk"))
_INSERT_MESSAGES = insert(_msg)
_INSERT_OUTBOX = insert(_outbox)


@dataclass(frozen=True)
class Posted:
    """The outcome: the new message (`created`, with the poster's answer), or the id of the
    one this request repeats."""

    message_id: str
    created: bool
    answer: dict[str, Any] | None = None


def post(svc: Services, who: Principal, cid: str, body: Mapping[str, Any]) -> Posted:
    """Post a message without attachments; returns once its row and outbox row are committed.
    Raises the request's own DomainError if it is refused."""
    posted: Posted = _committer(svc).submit(Posting(who, cid, body, logs.current("request_id")))
    return posted


_committers: WeakKeyDictionary[sessionmaker[Session], GroupCommit[Posting]] = WeakKeyDictionary()
_committers_lock = threading.Lock()


def _committer(svc: Services) -> GroupCommit[Posting]:
    """One group commit per process and database (the test suite runs two apps side by side)."""
    found = _committers.get(svc.Session)
    if found is None:
        with _committers_lock:
            found = _committers.get(svc.Session)
            if found is None:
                publisher = Publisher(svc)
                found = GroupCommit(
                    lambda batch: write(svc, batch),
                    lambda batch: publish(publisher, batch),
                    hold=Pacer(svc).pause_s,
                    window_s=WINDOW_S,
                    max_batch=MAX_BATCH,
                )
                _committers[svc.Session] = found
    return found


class Pacer:
    """Backpressure: when messages wait more than `ingest_pace_lag_ms` for the moderation stage
    to take them (the pipeline's lag: the last batch's queue wait, domain/fanout.LAG_KEY), the
    batch just committed keeps its answers, and the process its next batch, for the excess (at
    most `ingest_pace_max_ms`). Senders then post at the rate the pipeline takes messages, so a
    burst waits at the senders instead of in a backlog that every later message, anyone's,
    waits behind. The pause comes after the commit and the publish (GroupCommit's `hold`): it
    never delays the delivery of the messages paced. The lag is read at most every LAG_READ_S;
    without Redis, nobody is paced. Off by default (`ingest_pace_lag_ms` = 0)."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._read_at = float("-inf")
        self._lag_ms = 0.0

    def pause_s(self) -> float:
        """How long to hold the batch just committed, in seconds (0: not at all)."""
        target = self.svc.settings.ingest_pace_lag_ms
        if target <= 0:
            return 0.0
        now = time.monotonic()
        if now - self._read_at >= LAG_READ_S:
            try:
                self._lag_ms = fanout.lag_ms(self.svc)
            except Exception as exc:  # Redis unreachable: no lag known
                logger.debug("pace: lag unknown: %s", exc)
                self._lag_ms = 0.0
            self._read_at = now
        if self._lag_ms <= target:
            return 0.0
        pause = min(self._lag_ms - target, self.svc.settings.ingest_pace_max_ms)
        logger.debug("pace: pipeline %.0f ms behind, answers held %.0f ms", self._lag_ms, pause)
        return pause / 1000


def write(svc: Services, batch: Sequence[Item[Posting]]) -> None:
    """Write a batch in one transaction and give each item its outcome; after a unique
    violation, once more one item per transaction."""
    try:
        _write(svc, batch)
    except IntegrityError:
        if len(batch) == 1:
            _lost_race(svc, batch[0])
            return
        logger.info("group commit: unique violation in a batch of %d, one by one", len(batch))
        for item in batch:
            try:
                _write(svc, [item])
            except IntegrityError:
                _lost_race(svc, item)


def _lost_race(svc: Services, item: Item[Posting]) -> None:
    """A concurrent request with the same client_msg_id committed first: return its message."""
    p = item.value
    cmid = p.body.get("client_msg_id")
    found = None
    if cmid and p.who.user_id is not None:
        with svc.ReadSession() as s:
            found = s.execute(
                select(_msg.c.id, _msg.c.conversation_id).where(
                    _msg.c.sender_id == p.who.user_id, _msg.c.client_msg_id == cmid
                )
            ).first()
    if found is None:
        item.answer(error=RuntimeError("the message could not be stored (unique violation)"))
    elif found.conversation_id != p.cid:
        item.answer(error=other_conversation())
    else:
        item.answer(Posted(found.id, False))


def _write(svc: Services, batch: Sequence[Item[Posting]]) -> None:
    outcomes: dict[int, Posted | BaseException] = {}
    accepted: list[tuple[int, Item[Posting]]] = []
    first_of: dict[tuple[str, str], int] = {}  # (sender, client_msg_id) → its item in this batch
    # A Core connection, not an ORM session: every statement here is Core, and a session's
    # transaction bookkeeping cost 10-20% of the write's CPU (docs/performance.md, Ingest).
    with svc.engine.begin() as conn:
        looked_up = lookup(conn, [item.value for item in batch])
        for k, item in enumerate(batch):
            try:
                check(svc, item.value, looked_up[k])
                key = _idempotency_key(item.value)
                if key is not None:
                    if key in first_of:  # the same request twice in one batch
                        earlier = batch[first_of[key]].value
                        if earlier.cid != item.value.cid:
                            raise other_conversation()
                        outcomes[k] = Replay("")  # filled in with the first one's id below
                        continue
                    first_of[key] = k
                accepted.append((k, item))
            except Replay as replay:
                outcomes[k] = Posted(replay.message_id, False)
            except DomainError as exc:
                outcomes[k] = exc
        if accepted:
            rows = _insert(svc, conn, [item.value for _, item in accepted])
            for (k, item), row in zip(accepted, rows, strict=True):
                outcomes[k] = Posted(row["id"], True, _answer(row, item.value))
    for k, item in enumerate(batch):
        got = outcomes[k]
        if isinstance(got, Replay):
            key = _idempotency_key(item.value)
            assert key is not None
            first = outcomes[first_of[key]]
            assert isinstance(first, Posted)
            item.answer(Posted(first.message_id, False))
        elif isinstance(got, Posted):
            item.answer(got)
        else:
            item.answer(error=got)


def _idempotency_key(p: Posting) -> tuple[str, str] | None:
    cmid = p.body.get("client_msg_id")
    return (p.who.user_id, cmid) if cmid and p.who.user_id is not None else None


def _insert(svc: Services, conn: Connection, posts: Sequence[Posting]) -> list[dict[str, Any]]:
    """Seqs per conversation (`ingest_seqs.reserve`, in id order), the sealed texts, then one
    INSERT of the messages and one of the outbox rows. Returns the message rows, in the order
    of `posts`."""
    now = utcnow()
    by_conv: dict[str, list[int]] = {}
    for i, p in enumerate(posts):
        by_conv.setdefault(p.cid, []).append(i)
    seqs: list[int] = [0] * len(posts)
    keys: dict[str, str] = {}
    reserved = ingest_seqs.reserve(conn, {cid: len(by_conv[cid]) for cid in sorted(by_conv)}, now)
    for cid, (last, dk) in reserved.items():
        mine = by_conv[cid]
        if dk is None:  # the conversation's first message: its data key, in this transaction
            with Session(bind=conn) as s:  # joins the batch's transaction, never ends it
                dk = create_data_key(svc, s, cid)
                s.flush()
            conn.execute(_SET_KEY, {"conv": cid, "dk": dk})
        keys[cid] = dk
        for n, i in enumerate(mine):
            seqs[i] = last - len(mine) + 1 + n
    rows = []
    for i, p in enumerate(posts):
        mid = new_id()
        text = p.body.get("text")
        dk = keys[p.cid]
        rows.append(
            {
                "id": mid,
                "conversation_id": p.cid,
                "seq": seqs[i],
                "sender_id": p.who.user_id,
                "client_msg_id": p.body.get("client_msg_id"),
                "type": p.body.get("type", "text"),
                "text_ct": svc.keyring.seal_text(dk, text, message_aad(mid))
                if text is not None
                else None,
                "key_id": dk if text is not None else None,
                "reply_to_id": p.body.get("reply_to"),
                "state": "pending",
                "moderation_labels": [],
                "moderation_spans": [],
                "metadata": p.body.get("metadata") or {},
                "created_at": now,
            }
        )
    conn.execute(_INSERT_MESSAGES, rows)
    conn.execute(
        _INSERT_OUTBOX,
        [
            {
                "task": MODERATE_TASK,
                "args": [r["id"], r["conversation_id"]],
                "ref_id": r["id"],
                "created_at": now,
                "attempts": 0,
            }
            for r in rows
        ],
    )
    # One line per batch (a line per message cost more than its INSERT); the ids are in it.
    logger.info(
        "%d message(s) accepted in one transaction",
        len(rows),
        extra={
            "message_ids": " ".join(f"{r['id']}:{r['conversation_id']}:{r['seq']}" for r in rows)
        },
    )
    return rows


def _answer(row: Mapping[str, Any], p: Posting) -> dict[str, Any]:
    """What domain/render.render_message gives the poster for this row, built from what the
    request already holds (the text it sent, no verdict, no attachments, no reactions) rather
    than from an ORM object and a second decryption. The poster is its sender, or an API key
    (a moderator): either way privileged, so the text is the original and `moderation` is
    present; tests/domain/test_ingest.py holds the two shapes equal."""
    is_sender = row["sender_id"] is not None and row["sender_id"] == p.who.user_id
    out: dict[str, Any] = {
        "id": row["id"],
        "conversation_id": row["conversation_id"],
        "seq": row["seq"],
        "sender_id": row["sender_id"],
        "type": row["type"],
        "text": p.body.get("text"),
        "state": row["state"],
        "created_at": iso(row["created_at"]),
        "edited_at": None,
        "deleted": False,
        "reply_to": row["reply_to_id"],
        "attachments": [],
        "reactions": [],
        "pinned": False,
        "metadata": row["metadata"],
    }
    if row["client_msg_id"] and is_sender:
        out["client_msg_id"] = row["client_msg_id"]
    out["moderation"] = None
    if is_sender:
        out["status"] = "sent"
    return out


def publish(publisher: Publisher, batch: Sequence[Item[Posting]]) -> None:
    """After the commit: the batch's new messages to the moderation stage, through the
    publisher (domain/ingest_publisher.py), which sends their task off the request's path (each
    message also has its outbox row, so the sweeper re-sends any message the task did not
    reach), each with its request's id for the stage's logs."""
    created = [
        (r.message_id, item.value.cid, item.value.request_id or "")
        for item in batch
        if isinstance(r := item.result, Posted) and r.created
    ]
    if created:
        publisher.publish(created)
