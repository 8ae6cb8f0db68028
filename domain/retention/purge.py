"""The purge, in two phases so a mistake can be undone and nothing is half-deleted under a
reader:

1. hide: expired messages get `expired_at`; every read path filters on it
   (`domain.conversations.unexpired`), so they leave lists, fetches, previews, unread counts
   and live renders at once.
2. delete: after `PARLEY_RETENTION_GRACE_S` the hidden rows go for good, with their edit
   history, reactions, reports, notifications and attachment files. Soft-deleted tombstones go
   the same way once they are older than the grace period.

Sequence numbers and cursors are never touched: `last_seq` only grows, purged seqs are simply
absent history, and unread counts are counted from rows, so they cannot go negative.

Every batch is idempotent (compare-and-set updates, deletes by id with the condition checked
again under the row lock, storage deletes that accept a missing object), so two purges at once
cannot double-delete; the Redis lock only saves the second one the wasted work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import LockError, RedisError
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from ulid import ULID

from core.ids import utcnow
from core.services import Services
from domain import events
from domain.retention.deleting import delete_attachment_files, delete_messages, rowcount
from domain.retention.policy import global_seconds
from models import Attachment, Conversation, Message, Notification, Participant

logger = logging.getLogger(__name__)

PURGE_TASK = "tasks.retention.purge"
LOCK_KEY = "parley:lock:retention"
LOCK_TTL_S = 120  # renewed after every batch; a dead worker frees it within this

Tick = Callable[[], None]


@dataclass
class PurgeReport:
    """What one purge run did (counts of rows and stored files)."""

    hidden: int = 0
    restored: int = 0
    purged: int = 0
    tombstones: int = 0
    attachments: int = 0
    files: int = 0
    exports: int = 0
    skipped: bool = False
    seconds: float = 0.0
    conversations: set[str] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("conversations")
        return out

    def summary(self) -> str:
        if self.skipped:
            return "another purge holds the lock; nothing done"
        return (
            f"hid {self.hidden} expired message(s) in {len(self.conversations)} conversation(s); "
            f"deleted {self.purged} expired message(s) and {self.tombstones} tombstone(s) past "
            f"the grace period, {self.attachments} attachment(s) ({self.files} file(s)); "
            f"removed {self.exports} expired export(s) in {self.seconds:.2f}s"
        )


@contextmanager
def purge_lock(svc: Services, ttl_s: int = LOCK_TTL_S) -> Iterator[Tick | None]:
    """Hold the purge lock, yielding a renewer to call after each batch, or None if another
    purge holds it.

    A Redis lock rather than a database advisory lock: SQLite has none, a PostgreSQL session
    lock would pin one pooled connection across many short transactions, and the TTL frees it
    when a worker dies mid-run. Losing it (a stall past the TTL) is harmless: batches are
    idempotent, so two runs at once only repeat work.
    """
    lock = svc.redis.lock(LOCK_KEY, timeout=ttl_s, blocking=False, thread_local=False)
    if not lock.acquire(blocking=False):
        yield None
        return

    def renew() -> None:
        try:
            lock.extend(ttl_s, replace_ttl=True)
        except (LockError, RedisError):
            logger.warning("retention lock lost during a purge; going on (batches are idempotent)")

    try:
        yield renew
    finally:
        with suppress(LockError, RedisError):  # expired already, or Redis away: the TTL frees it
            lock.release()


def run(svc: Services, *, now: datetime | None = None, lock: bool = True) -> PurgeReport:
    """One purge run: hide what expired, delete what is past the grace period, drop expired
    exports. `now` is for tests and backfills; `lock=False` skips the lock (tests only)."""
    started = time.monotonic()
    now = now or utcnow()
    if not lock:
        report = _run(svc, now, lambda: None)
    else:
        with purge_lock(svc) as tick:
            if tick is None:
                return PurgeReport(skipped=True)
            report = _run(svc, now, tick)
    report.seconds = time.monotonic() - started
    logger.info("retention purge done", extra=report.as_dict())
    return report


def _run(svc: Services, now: datetime, tick: Tick) -> PurgeReport:
    # imported here: GDPR erasure builds on this package's deleting and shredding
    from domain.gdpr.stored_exports import expire_exports

    report = PurgeReport()
    hide_expired(svc, now, tick, report)
    grace = timedelta(seconds=svc.settings.retention_grace_s)
    report.purged = purge_where(svc, Message.expired_at < now - grace, tick, report)
    report.tombstones = purge_where(svc, Message.deleted_at < now - grace, tick, report)
    report.exports = expire_exports(svc, now)
    return report


def id_floor(moment: datetime) -> str:
    """The smallest message id created after `moment`: ids are ULIDs, which sort by creation
    time, so `Message.id < id_floor(t)` walks the primary key instead of scanning by date."""
    return str(ULID.from_timestamp(moment.timestamp() + 0.001))[:10] + "0" * 16


def hide_expired(svc: Services, now: datetime, tick: Tick, report: PurgeReport) -> None:
    """Phase 1: mark messages older than their conversation's retention as hidden.

    One pass per distinct policy value (overrides are few), each walking messages below the
    cutoff in id order, `retention_batch` rows per transaction."""
    batch = svc.settings.retention_batch
    with svc.ReadSession() as s:
        overrides = list(
            s.scalars(
                select(Conversation.retention_s)
                .where(Conversation.retention_s > 0, Conversation.deleted_at.is_(None))
                .distinct()
            )
        )
    passes: list[tuple[Any, int]] = [(Conversation.retention_s == v, v) for v in overrides if v]
    default = global_seconds(svc.settings)
    if default is not None:
        passes.append((Conversation.retention_s.is_(None), default))
    for policy, seconds in passes:
        cutoff = now - timedelta(seconds=seconds)
        floor = id_floor(cutoff)
        while True:
            with svc.Session.begin() as s:
                rows = s.execute(
                    select(Message.id, Message.conversation_id, Message.seq)
                    .join(Conversation, Conversation.id == Message.conversation_id)
                    .where(
                        policy,
                        Conversation.deleted_at.is_(None),
                        Message.id < floor,
                        Message.created_at < cutoff,
                        Message.expired_at.is_(None),
                    )
                    .order_by(Message.id)
                    .limit(batch)
                ).all()
                if rows:
                    report.hidden += _hide(s, [r.id for r in rows], now)
                    through: dict[str, int] = {}
                    for _, cid, seq in rows:
                        through[cid] = max(seq, through.get(cid, 0))
                    _announce_hidden(s, through)
                    report.conversations.update(through)
            tick()
            if len(rows) < batch:
                break


def _hide(session: Session, ids: Sequence[str], now: datetime) -> int:
    hidden = rowcount(
        session.execute(
            update(Message)
            .where(Message.id.in_(ids), Message.expired_at.is_(None))
            .values(expired_at=now)
        )
    )
    # A badge for messages nobody can open any more is noise: read it.
    session.execute(
        update(Notification)
        .where(Notification.message_id.in_(ids), Notification.read_at.is_(None))
        .values(read_at=now)
    )
    return hidden


def _announce_hidden(session: Session, through: dict[str, int]) -> None:
    """One `conversation.updated` per conversation and batch, so clients drop what they
    cached: `hidden_through_seq` is the highest seq hidden."""
    members: dict[str, list[str]] = {}
    for cid, uid in session.execute(
        select(Participant.conversation_id, Participant.user_id).where(
            Participant.conversation_id.in_(list(through)), Participant.left_at.is_(None)
        )
    ):
        members.setdefault(cid, []).append(uid)
    for cid, seq in through.items():
        data = {"conversation_id": cid, "change": "retention", "hidden_through_seq": seq}
        events.emit(session, "conversation.updated", data, members.get(cid, []))


def purge_where(svc: Services, condition: Any, tick: Tick, report: PurgeReport) -> int:
    """Phase 2: delete messages matching `condition` (past the grace period), in batches.

    Files go first: a crash then leaves rows to retry, never files that nothing points to."""
    batch = svc.settings.retention_batch
    deleted = 0
    while True:
        with svc.ReadSession() as s:
            ids = list(
                s.scalars(select(Message.id).where(condition).order_by(Message.id).limit(batch))
            )
            atts = list(s.scalars(select(Attachment).where(Attachment.message_id.in_(ids))))
        if not ids:
            break
        report.files += delete_attachment_files(svc, atts)
        with svc.Session.begin() as s:
            gone = delete_messages(svc, s, ids, condition)
            report.attachments += gone[1]
            deleted += gone[0]
        tick()
        if len(ids) < batch:
            break
    return deleted
