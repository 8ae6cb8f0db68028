"""The moderation stage: verdicts for a conversation's waiting messages, then their fan-out.

Messages are moderated in per-conversation batches: the first task of a burst moderates every
message of its conversation still waiting, and the tasks of the others find their verdict
made and their fan-out done, and end after one read. Verdicts commit before the fan-out
appends anything: a hub may render the message before the fan-out's own commit.

Fan-out runs in the same task execution (one broker hop per message instead of two); it is
still its own stage (domain/fanout.py, tasks/fanout.py), with its own task for re-runs and for
messages that become ready while another is being moderated. The text rules are moderation/'s;
this module decides which messages they run on, and records what they said.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import metrics
from core.services import Services
from domain import fanout, flood
from domain.keys import message_aad
from domain.search import index as search_index
from models import Conversation, DeliveryCursor, Message
from moderation import moderate, policy_for

logger = logging.getLogger(__name__)

BATCH = 100  # messages moderated in one transaction


def conversation_to_moderate(
    svc: Services, message_id: str, conversation_id: str | None = None
) -> str | None:
    """The conversation whose waiting messages a task for `message_id` must moderate, or None
    when there is nothing left to do (the message is gone, or moderated and fanned out).

    A fresh message (no fan-out record in Redis) needs no read at all; a task finding its
    message already fanned out (a burst's earlier task took it, a redelivery, the sweeper)
    ends after a read that takes no write lock. Tasks queued before `conversation_id` was
    passed look it up."""
    if conversation_id is not None and not fanout.fanned_out(svc, message_id):
        return conversation_id
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


def moderate_and_fan_out(svc: Services, conversation_id: str, message_id: str) -> None:
    """Verdicts for the conversation's waiting messages, committed, then their fan-out.

    Two transactions on purpose: the hubs render a `message.new` as soon as it is in the
    streams, which is before the fan-out commits, so the verdict (and the spans to mask) must
    already be committed when the fan-out appends it."""
    with svc.Session.begin() as s:
        verdicts = moderate_waiting(svc, s, conversation_id, message_id)
    for verdict_made in verdicts:  # counted once committed, so a retried run counts once
        metrics.moderation_verdict(*verdict_made)
    fanout.drain(svc, conversation_id)


def moderate_waiting(
    svc: Services, s: Session, conversation_id: str, message_id: str
) -> list[tuple[str, list[str]]]:
    """Moderate every message of the conversation still waiting (up to BATCH, in seq order,
    always including `message_id`), in the caller's transaction: under a burst each task
    would otherwise take the write lock for one message, and the fan-out walk stops at the
    first unmoderated one anyway. Rows another task is moderating right now are skipped
    (PostgreSQL row locks; SQLite's BEGIN IMMEDIATE serializes the tasks anyway). Returns
    the verdicts (action, labels) made."""
    verdicts: list[tuple[str, list[str]]] = []
    waiting = (
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.moderation_action.is_(None))
        .order_by(Message.seq)
    )
    own_stmt = select(Message).where(Message.id == message_id)
    if svc.dialect != "sqlite":
        waiting = waiting.with_for_update(skip_locked=True)
        own_stmt = own_stmt.with_for_update(skip_locked=True)
    batch = list(s.scalars(waiting.limit(BATCH)))
    if message_id not in {m.id for m in batch}:
        own = s.scalar(own_stmt)
        if own is not None and own.moderation_action is None:
            batch.append(own)
    if not batch:
        return verdicts
    conv_type = s.scalar(select(Conversation.type).where(Conversation.id == conversation_id))
    policy = policy_for(conv_type or "group", svc.settings.moderation_overrides)
    texts = [
        svc.keyring.open_text(m.key_id, m.text_ct, message_aad(m.id))
        if m.text_ct is not None and m.key_id is not None
        else ""
        for m in batch
    ]
    flooded = flood.record_and_check(
        svc,
        [(m.sender_id, text, conversation_id) for m, text in zip(batch, texts, strict=True)],
    )
    for msg, text, is_flood in zip(batch, texts, flooded, strict=True):
        verdict = moderate(text, policy)
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
            extra={"message_id": msg.id, "conversation_id": conversation_id},
        )
        verdicts.append((action, msg.moderation_labels))
    # The index stage reads the text again once these verdicts commit (docs/search.md).
    search_index.hand_off(s, conversation_id, [m.id for m in batch])
    return verdicts


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
