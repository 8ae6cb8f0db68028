"""The moderation stage: verdicts for the messages waiting, in any conversation, then fan-out.

Messages are moderated in batches across conversations: a task names its own messages (the web
sends one task for each group-commit batch of posts, the outbox sweeper one per message) and
takes every message still waiting (up to BATCH, whatever its conversation); a task whose
messages an earlier batch took ends after one Redis read. Verdicts commit before the
fan-out appends anything: a hub may render the message before the fan-out's own commit.

Fan-out runs in the same task execution (one broker hop per message instead of two); it is
still its own stage (domain/fanout.py, tasks/fanout.py), with its own task for re-runs and for
messages that become ready while another is being moderated. The text rules are moderation/'s;
this module decides which messages they run on, and records what they said.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Row, Table, bindparam, select, update

from core import metrics
from core.crypto import MissingKeyError
from core.ids import utcnow
from core.services import Services
from domain import fanout, flood
from domain.keys import message_aad
from models import Conversation, DeliveryCursor, Message
from models.db import Db, connection_of
from moderation import moderate, policy_for

logger = logging.getLogger(__name__)

BATCH = 100  # messages moderated in one transaction, across conversations


def still_to_moderate(svc: Services, messages: Sequence[tuple[str, str | None]]) -> dict[str, str]:
    """Of these (message id, conversation id or None), the ones a task must still moderate,
    by id, with their conversation; empty when there is nothing left to do (each message is
    gone, or moderated and fanned out).

    Messages a committed fan-out has walked past (an earlier task of a burst took them, a
    redelivery) are dropped on one Redis round trip for the lot; a fresh message needs no read
    at all. Tasks queued before the conversation id was passed look it up, with a read that
    takes no write lock."""
    walked = fanout.walked(svc, [mid for mid, _ in messages])
    left: dict[str, str] = {}
    for (mid, cid), done in zip(messages, walked, strict=True):
        if done:
            continue
        found = cid if cid is not None else _conversation_to_moderate(svc, mid)
        if found is not None:
            left[mid] = found
    return left


def _conversation_to_moderate(svc: Services, message_id: str) -> str | None:
    with svc.ReadSession() as s:
        row = s.execute(
            select(Message.conversation_id, Message.seq, Message.moderation_action).where(
                Message.id == message_id
            )
        ).first()
        if row is None:
            logger.warning("moderate: message gone", extra={"message_id": message_id})
            return None
        found, seq, action = row
        if action is not None:
            fanned = s.scalar(
                select(DeliveryCursor.fanout_seq).where(DeliveryCursor.conversation_id == found)
            )
            if fanned is not None and fanned >= seq:
                return None
    return str(found)


def moderate_and_fan_out(svc: Services, own: Mapping[str, str]) -> None:
    """Verdicts for the messages waiting (across conversations, `own` among them: message id
    to conversation id), committed, then their fan-out.

    Two transactions on purpose: the hubs render a `message.new` as soon as it is in the
    streams, which is before the fan-out commits, so the verdict (and the spans to mask) must
    already be committed when the fan-out appends it."""
    started = time.perf_counter()
    if _locks(svc):
        with svc.engine.begin() as conn:  # Core statements only: no ORM session to set up
            taken = moderate_waiting(svc, conn, own)
    else:
        taken = _judged_then_written(svc, own)
    for verdict_made in taken.verdicts:  # counted once committed, so a retried run counts once
        metrics.moderation_verdict(*verdict_made)
    committed = time.perf_counter()
    fanout.drain_many(svc, taken.to_fan_out, taken.waited_ms)
    # Where a stage's time goes (bench/pipeline.py sums these lines from the worker's log).
    logger.info(
        "moderation batch: %d verdict(s), %d conversation(s) fanned out, "
        "verdicts %.2f ms, fan-out %.2f ms",
        len(taken.verdicts),
        len(taken.to_fan_out),
        (committed - started) * 1000,
        (time.perf_counter() - committed) * 1000,
    )


@dataclass
class Taken:
    """What one moderation transaction did: the verdicts it made, and the conversations whose
    fan-out its task runs next."""

    verdicts: list[tuple[str, list[str]]] = field(default_factory=list)
    to_fan_out: list[str] = field(default_factory=list)
    waited_ms: float | None = None  # how long its oldest message waited to be taken


@dataclass
class Judged:
    """A batch's verdicts, not yet written: the rows as they were read, and one `_VERDICT`
    parameter set per row."""

    taken: Taken
    rows: list[Waiting] = field(default_factory=list)
    verdicts: list[dict[str, object]] = field(default_factory=list)


def moderate_waiting(svc: Services, db: Db, own: Mapping[str, str]) -> Taken:
    """Moderate the messages waiting for a verdict, whatever their conversation (up to BATCH,
    oldest first, always including the task's `own` messages unless another task holds them),
    in the caller's transaction: under a burst one task takes what is waiting and the others
    find their messages done, and the fan-out walk stops at the first unmoderated message
    anyway.

    Rows another task is moderating (or fanning out) right now are skipped (PostgreSQL's
    SKIP LOCKED; SQLite's BEGIN IMMEDIATE serializes the tasks anyway). The fan-out then
    covers the batch's conversations and those of the task's own messages, except a message
    whose row another task held: that task fans it out after its commit (and if it dies
    first, the outbox sweeper re-sends this message's task)."""
    conn = connection_of(db)
    judged = _judge(svc, conn, own, _locks(svc))
    _write(conn, judged)
    return judged.taken


def _judged_then_written(svc: Services, own: Mapping[str, str]) -> Taken:
    """SQLite's way: its one write lock covers the whole file, so every post and every other
    stage waits while a writer holds it. The batch is read and judged before the lock is
    taken (opening the texts, the flood check's Redis round trip, the rules); under the lock
    one read checks that each row is as it was judged, and the verdicts are written. If any
    row changed meanwhile (another task judged it, an edit, a delete), that judgement is
    dropped and the batch is judged again under the lock, as `moderate_waiting` always does.
    Judging twice is harmless: the rules are pure, and the flood check answers a message
    what it answered the first time (domain/flood.py)."""
    with svc.ReadSession() as s:
        judged = _judge(svc, connection_of(s), own, locks=False)
    return _written(svc, judged, own)


def _written(svc: Services, judged: Judged, own: Mapping[str, str]) -> Taken:
    """Under the write lock: `judged` written if its rows are as they were judged, else the
    batch judged again and written (see `_judged_then_written`). Nothing judged, nothing to
    write: the task's own messages were committed before it was sent, so the read saw them."""
    if not judged.rows:
        return judged.taken
    with svc.engine.begin() as conn:
        if _as_judged(conn, judged.rows):
            _write(conn, judged)
            return judged.taken
        return moderate_waiting(svc, conn, own)


def _judge(svc: Services, conn: Connection, own: Mapping[str, str], locks: bool) -> Judged:
    """Read the batch (see `moderate_waiting`) and make its verdicts, writing nothing."""
    taken = Taken()
    judged = Judged(taken)
    batch = list(conn.execute(_WAITING_LOCKED if locks else _WAITING))
    free = {m.id for m in batch} & own.keys()
    missing = [mid for mid in own if mid not in free]
    if missing:
        for m in conn.execute(_OWN_LOCKED if locks else _OWN, {"ids": missing}):
            free.add(m.id)
            if m.moderation_action is None:
                batch.append(m)
    taken.to_fan_out = list(dict.fromkeys(own[mid] for mid in own if mid in free))
    if not batch:
        return judged
    batch, texts = _opened(svc, batch, own.keys())
    if not batch:
        return judged
    oldest = min(m.created_at for m in batch)
    taken.waited_ms = max(0.0, (utcnow() - oldest).total_seconds() * 1000)
    cids = list(dict.fromkeys(m.conversation_id for m in batch))
    flooded = flood.record_and_check(
        svc,
        [
            (m.sender_id, text, m.conversation_id, m.id)
            for m, text in zip(batch, texts, strict=True)
        ],
    )
    overrides = svc.settings.moderation_overrides
    for msg, text, is_flood in zip(batch, texts, flooded, strict=True):
        verdict = moderate(text, policy_for(msg.conversation_type, overrides))
        action, reason = verdict.action, verdict.reason
        labels: list[str] = list(verdict.labels)
        if is_flood:
            labels.append(flood.LABEL)
            if action in ("allow", "mask"):
                action, reason = "hold", "the same text was sent to many conversations"
        held = action in ("hold", "reject")
        judged.verdicts.append(
            {
                "mid": msg.id,
                "action": action,
                "labels": sorted(labels),
                "spans": masked_spans(text, verdict.masked),
                "state": ("held" if action == "hold" else "rejected") if held else msg.state,
                "reason": reason[:300] if held else None,
            }
        )
        taken.verdicts.append((action, sorted(labels)))
    judged.rows = batch
    taken.to_fan_out = list(dict.fromkeys([*taken.to_fan_out, *cids]))
    return judged


def _write(conn: Connection, judged: Judged) -> None:
    if not judged.verdicts:
        return
    conn.execute(_VERDICT, judged.verdicts)
    for msg, verdict in zip(judged.rows, judged.verdicts, strict=True):
        logger.info(
            "moderated %s",
            verdict["action"],
            extra={"message_id": msg.id, "conversation_id": msg.conversation_id},
        )


def _as_judged(conn: Connection, rows: Sequence[Waiting]) -> bool:
    """Whether each of these rows still waits for its verdict with the state and text it was
    judged on (an edit gives a message its verdict; a delete removes its text)."""
    now = {r.id: r for r in conn.execute(_RECHECK, {"ids": [m.id for m in rows]})}
    for m in rows:
        r = now.get(m.id)
        if r is None or r.moderation_action is not None:
            return False
        if r.state != m.state or r.text_ct != m.text_ct:
            return False
    return True


# Built once, plain rows of the columns the stage reads (ORM objects and their JSON columns
# cost more than the verdicts), the verdicts written with one executemany. The conversation's
# type (which policy applies) comes with each message; only the message rows are locked
# (FOR UPDATE OF messages): posts reserve their seqs on the conversation's row.
_COLUMNS = (
    Message.id,
    Message.conversation_id,
    Message.sender_id,
    Message.key_id,
    Message.text_ct,
    Message.created_at,
    Message.moderation_action,
    Message.state,
    Conversation.type.label("conversation_type"),
)
_WAITING = (
    select(*_COLUMNS)
    .join(Conversation, Conversation.id == Message.conversation_id)
    .where(
        Message.state == "pending",
        Message.moderation_action.is_(None),
        Conversation.deleted_at.is_(None),  # a deleted conversation's messages wait for its purge
    )
    .order_by(Message.created_at)
    .limit(BATCH)
)
_WAITING_LOCKED = _WAITING.with_for_update(skip_locked=True, of=Message)
_OWN = (
    select(*_COLUMNS)
    .join(Conversation, Conversation.id == Message.conversation_id)
    .where(Message.id.in_(bindparam("ids", expanding=True)))
)
_OWN_LOCKED = _OWN.with_for_update(skip_locked=True, of=Message)
_RECHECK = select(Message.id, Message.moderation_action, Message.state, Message.text_ct).where(
    Message.id.in_(bindparam("ids", expanding=True))
)
_messages = cast(Table, Message.__table__)
_VERDICT = (
    update(_messages)
    .where(_messages.c.id == bindparam("mid"))
    .values(
        moderation_action=bindparam("action"),
        moderation_labels=bindparam("labels"),
        moderation_spans=bindparam("spans"),
        state=bindparam("state"),
        moderation_reason=bindparam("reason"),
    )
)
Waiting = Row[str, str, str | None, str | None, bytes | None, datetime, str | None, str, str]


def _locks(svc: Services) -> bool:
    """Whether the database takes row locks (SQLite locks the whole file per writer)."""
    return svc.dialect != "sqlite"


def _opened(
    svc: Services, batch: list[Waiting], own: Collection[str]
) -> tuple[list[Waiting], list[str]]:
    """The batch's messages whose text opens, with their texts.

    A batch spans conversations, so one message that cannot be opened must not stall the
    others: it is the oldest waiting, so every later batch would take it again. A message of a
    conversation deleted meanwhile (keys shredded; its purge job deletes the row) is left out;
    any other failure is logged and left out too, unless it is one of this task's own
    messages: the task then fails and is retried as before."""
    kept: list[Waiting] = []
    texts: list[str] = []
    for m in batch:
        try:
            text = (
                svc.keyring.open_text(m.key_id, m.text_ct, message_aad(m.id))
                if m.text_ct is not None and m.key_id is not None
                else ""
            )
        except MissingKeyError:
            logger.info(
                "moderate: conversation deleted, message left to its purge",
                extra={"message_id": m.id, "conversation_id": m.conversation_id},
            )
            continue
        except Exception:
            if m.id in own:
                raise
            logger.exception(
                "moderate: message could not be opened, left to its own task",
                extra={"message_id": m.id, "conversation_id": m.conversation_id},
            )
            continue
        kept.append(m)
        texts.append(text)
    return kept, texts


def masked_spans(text: str, masked: str) -> list[list[int]]:
    """Offsets where the verdict changed the text: exactly what recipients must not see."""
    spans: list[list[int]] = []
    start = None
    for i, (a, b) in enumerate(zip(text, masked, strict=False)):
        if a != b and start is None:
            start = i
        elif a == b and start is not None and not a.isspace():
            spans.append([start, i])
            start = None
    if start is not None:
        spans.append([start, len(text)])
    return spans
