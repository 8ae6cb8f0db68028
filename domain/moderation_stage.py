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

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from core import metrics
from core.crypto import MissingKeyError
from core.ids import utcnow
from core.services import Services
from domain import fanout, flood
from domain.keys import message_aad
from models import Conversation, DeliveryCursor, Message
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
    with svc.Session.begin() as s:
        taken = moderate_waiting(svc, s, own)
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


def moderate_waiting(svc: Services, s: Session, own: Mapping[str, str]) -> Taken:
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
    taken = Taken()
    waiting = (
        select(Message)
        .where(
            Message.state == "pending",
            Message.moderation_action.is_(None),
            ~exists().where(  # a deleted conversation's messages wait for its purge
                Conversation.id == Message.conversation_id, Conversation.deleted_at.is_not(None)
            ),
        )
        .order_by(Message.created_at)
        .limit(BATCH)
    )
    batch = list(s.scalars(waiting.with_for_update(skip_locked=True) if _locks(svc) else waiting))
    free = {m.id for m in batch} & own.keys()
    missing = [mid for mid in own if mid not in free]
    if missing:
        own_stmt = select(Message).where(Message.id.in_(missing))
        for m in s.scalars(own_stmt.with_for_update(skip_locked=True) if _locks(svc) else own_stmt):
            free.add(m.id)
            if m.moderation_action is None:
                batch.append(m)
    taken.to_fan_out = list(dict.fromkeys(own[mid] for mid in own if mid in free))
    if not batch:
        return taken
    batch, texts = _opened(svc, batch, own.keys())
    if not batch:
        return taken
    oldest = min(m.created_at for m in batch)
    taken.waited_ms = max(0.0, (utcnow() - oldest).total_seconds() * 1000)
    cids = list(dict.fromkeys(m.conversation_id for m in batch))
    types: dict[str, str] = {
        cid: ctype
        for cid, ctype in s.execute(
            select(Conversation.id, Conversation.type).where(Conversation.id.in_(cids))
        )
    }
    flooded = flood.record_and_check(
        svc, [(m.sender_id, text, m.conversation_id) for m, text in zip(batch, texts, strict=True)]
    )
    overrides = svc.settings.moderation_overrides
    for msg, text, is_flood in zip(batch, texts, flooded, strict=True):
        verdict = moderate(text, policy_for(types.get(msg.conversation_id) or "group", overrides))
        action, reason = verdict.action, verdict.reason
        labels: list[str] = list(verdict.labels)
        if is_flood:
            labels.append(flood.LABEL)
            if action in ("allow", "mask"):
                action, reason = "hold", "the same text was sent to many conversations"
        msg.moderation_action = action
        msg.moderation_labels = sorted(labels)
        msg.moderation_spans = masked_spans(text, verdict.masked)
        if action in ("hold", "reject"):
            msg.state = "held" if action == "hold" else "rejected"
            msg.moderation_reason = reason[:300]
        logger.info(
            "moderated %s",
            action,
            extra={"message_id": msg.id, "conversation_id": msg.conversation_id},
        )
        taken.verdicts.append((action, msg.moderation_labels))
    taken.to_fan_out = list(dict.fromkeys([*taken.to_fan_out, *cids]))
    return taken


def _locks(svc: Services) -> bool:
    """Whether the database takes row locks (SQLite locks the whole file per writer)."""
    return svc.dialect != "sqlite"


def _opened(
    svc: Services, batch: list[Message], own: Collection[str]
) -> tuple[list[Message], list[str]]:
    """The batch's messages whose text opens, with their texts.

    A batch spans conversations, so one message that cannot be opened must not stall the
    others: it is the oldest waiting, so every later batch would take it again. A message of a
    conversation deleted meanwhile (keys shredded; its purge job deletes the row) is left out;
    any other failure is logged and left out too, unless it is one of this task's own
    messages: the task then fails and is retried as before."""
    kept: list[Message] = []
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
