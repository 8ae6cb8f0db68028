"""Retention: how long messages are kept, the two-phase purge, and crypto-shredding.

A conversation keeps messages for its own `retention_s` if set (0 = forever), else for
`PARLEY_RETENTION_DAYS` (unset = forever). The purge has two phases so a mistake can be
undone and nothing is half-deleted under a reader:

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

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import LockError, RedisError
from sqlalchemy import Result, delete, func, select, update
from sqlalchemy.orm import Session
from ulid import ULID

from core.config import Settings
from core.ids import new_id, utcnow
from core.services import Services
from domain import audit, events, outbox
from domain.conversations import MANAGER_ROLES, readable
from domain.errors import Forbidden
from domain.principals import Principal
from models import (
    Attachment,
    Conversation,
    DataKey,
    DeliveryCursor,
    Job,
    Message,
    MessageEdit,
    Notification,
    Participant,
    Reaction,
    Report,
)

logger = logging.getLogger(__name__)

PURGE_TASK = "tasks.retention.purge"
DELETE_CONVERSATION_TASK = "tasks.retention.delete_conversation"
LOCK_KEY = "parley:lock:retention"
LOCK_TTL_S = 120  # renewed after every batch; a dead worker frees it within this
SHRED_CHANNEL = "parley:keys:shredded"
SHREDDED_KEY = "parley:keys:shredded:recent"  # sorted set id → time, for listeners catching up
SHREDDED_KEEP_S = 24 * 3600

Tick = Callable[[], None]


def _rows(result: Result[Any]) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# --- policy -----------------------------------------------------------------------------------


def global_seconds(settings: Settings) -> int | None:
    """The default retention in seconds, or None to keep forever."""
    return round(settings.retention_days * 86400) if settings.retention_days > 0 else None


def effective_seconds(settings: Settings, conv: Conversation) -> int | None:
    """How long `conv` keeps messages, in seconds; None keeps them forever."""
    if conv.retention_s is None:
        return global_seconds(settings)
    return conv.retention_s or None


def policy_view(settings: Settings, conv: Conversation) -> dict[str, Any]:
    return {
        "conversation_id": conv.id,
        "retention_seconds": conv.retention_s,
        "inherited": conv.retention_s is None,
        "effective_seconds": effective_seconds(settings, conv),
        "grace_seconds": round(settings.retention_grace_s),
    }


def get_policy(session: Session, who: Principal, cid: str) -> Conversation:
    conv, _ = readable(session, who, cid)
    return conv


def set_policy(
    settings: Settings, session: Session, who: Principal, cid: str, seconds: int | None
) -> Conversation:
    """Set (or, with None, clear) a conversation's retention override.

    Owners and admins of the conversation, platform moderators and API keys may. Messages it
    hid and whose grace period is not over come back if the new policy keeps them.
    """
    conv, part = readable(session, who, cid)
    if not who.is_moderator and (part is None or part.role not in MANAGER_ROLES):
        raise Forbidden(
            "only the conversation's owners or admins, moderators or an API key may set retention"
        )
    if conv.retention_s == seconds:
        return conv
    before = conv.retention_s
    conv.retention_s = seconds
    now = utcnow()
    keep = effective_seconds(settings, conv)
    restore = update(Message).where(
        Message.conversation_id == cid,
        Message.expired_at >= now - timedelta(seconds=settings.retention_grace_s),
    )
    if keep is not None:
        restore = restore.where(Message.created_at >= now - timedelta(seconds=keep))
    restored = _rows(session.execute(restore.values(expired_at=None)))
    audit.record(
        session,
        who,
        "conversation.retention",
        "conversation",
        cid,
        detail={"from": before, "to": seconds, "restored": restored},
    )
    members = [p.user_id for p in conv.active_participants()]
    events.emit(
        session, "conversation.updated", {"conversation_id": cid, "change": "retention"}, members
    )
    return conv


# --- the purge --------------------------------------------------------------------------------


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
    from domain import gdpr

    report = PurgeReport()
    hide_expired(svc, now, tick, report)
    grace = timedelta(seconds=svc.settings.retention_grace_s)
    report.purged = purge_where(svc, Message.expired_at < now - grace, tick, report)
    report.tombstones = purge_where(svc, Message.deleted_at < now - grace, tick, report)
    report.exports = gdpr.expire_exports(svc, now)
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
    hidden = _rows(
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


def delete_messages(
    svc: Services, session: Session, ids: Sequence[str], condition: Any = None
) -> tuple[int, int]:
    """Delete messages (and everything hanging off them) by id, in the caller's transaction.

    With `condition`, only rows that still match it under the row lock go, so a message
    restored or changed meanwhile stays. Returns (messages, attachment rows) deleted."""
    if not ids:
        return 0, 0
    stmt = select(Message.id).where(Message.id.in_(list(ids)))
    if condition is not None:
        stmt = stmt.where(condition)
    if svc.dialect != "sqlite":  # SQLite's BEGIN IMMEDIATE already serializes writers
        stmt = stmt.with_for_update()
    ids = list(session.scalars(stmt))
    if not ids:
        return 0, 0
    atts = _rows(session.execute(delete(Attachment).where(Attachment.message_id.in_(ids))))
    for child in (MessageEdit, Reaction, Report, Notification):
        session.execute(delete(child).where(child.message_id.in_(ids)))
    session.execute(
        update(Conversation)
        .where(Conversation.last_message_id.in_(ids))
        .values(last_message_id=None)
    )
    return _rows(session.execute(delete(Message).where(Message.id.in_(ids)))), atts


def delete_attachment_files(svc: Services, atts: Sequence[Attachment]) -> int:
    """Delete the stored bytes of these attachments: every variant and the upload spool.

    The hook for storage/: keys come from domain/attachments.py; deleting a missing object is
    fine, so a retry or a concurrent purge is harmless. Returns how many objects were named."""
    if not atts:
        return 0
    from domain import attachments as files

    store = files.storage_for(svc)
    named = 0
    for att in atts:
        variants = {*files.VARIANTS, *(att.variants or {})}
        keys = [files.upload_key(att.id)]
        keys += [files.object_key(att.conversation_id, att.id, v) for v in sorted(variants)]
        for key in keys:
            store.delete(key)
        named += len(att.variants or {}) + (1 if att.upload_key_ct is not None else 0)
    return named


# --- deleting a whole conversation (crypto-shredding) -----------------------------------------


def shred_conversation_keys(session: Session, cid: str) -> list[str]:
    """Delete every data key of a conversation, in the caller's transaction.

    From the commit on, its message text, edit history and attachment files cannot be opened
    by anyone holding only the database (backups: see docs/retention.md). Returns the key ids,
    which the caller must `forget_keys` after the commit."""
    ids = list(session.scalars(select(DataKey.id).where(DataKey.conversation_id == cid)))
    if ids:
        session.execute(delete(DataKey).where(DataKey.id.in_(ids)))
    return ids


def forget_keys(svc: Services, dk_ids: Sequence[str]) -> None:
    """Drop shredded keys from this process's key cache and tell every other process.

    Other processes learn it from the `parley:keys:shredded` channel (see KeyForgetter); the
    sorted set lets a listener that was disconnected catch up on what it missed."""
    if not dk_ids:
        return
    for dk in dk_ids:
        svc.keyring.forget(dk)
    now = time.time()
    try:
        pipe = svc.redis.pipeline()
        pipe.zadd(SHREDDED_KEY, dict.fromkeys(dk_ids, now))
        pipe.zremrangebyscore(SHREDDED_KEY, 0, now - SHREDDED_KEEP_S)
        pipe.publish(SHRED_CHANNEL, json.dumps(list(dk_ids)))
        pipe.execute()
    except RedisError:
        logger.warning(
            "could not announce %d shredded key(s); other caches keep them until restart",
            len(dk_ids),
        )


def start_conversation_purge(session: Session, who: Principal, cid: str) -> Job:
    job = Job(
        id=new_id(),
        kind="conversation_delete",
        params={"conversation_id": cid},
        created_by=who.label,
    )
    session.add(job)
    session.flush()  # state, timestamps: the 202 shows them
    outbox.add(session, DELETE_CONVERSATION_TASK, [job.id], ref_id=job.id)
    return job


def conversation_size(session: Session, cid: str) -> int:
    msgs = session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id == cid)
    )
    atts = session.scalar(
        select(func.count()).select_from(Attachment).where(Attachment.conversation_id == cid)
    )
    return int(msgs or 0) + int(atts or 0)


def purge_conversation(svc: Services, cid: str, progress: Callable[[int], None]) -> int:
    """Delete a deleted conversation's rows and files in batches; returns items deleted.

    Safe to run again after a crash: each batch deletes what is still there."""
    batch = svc.settings.retention_batch
    done = 0
    while True:
        with svc.ReadSession() as s:
            atts = list(
                s.scalars(select(Attachment).where(Attachment.conversation_id == cid).limit(batch))
            )
        if not atts:
            break
        delete_attachment_files(svc, atts)
        with svc.Session.begin() as s:
            gone = s.execute(delete(Attachment).where(Attachment.id.in_([a.id for a in atts])))
            done += _rows(gone)
        progress(done)
        if len(atts) < batch:
            break
    from domain import attachments as files

    store = files.storage_for(svc)
    for key in list(store.keys(f"attachments/{cid}/")):  # stray variants a media run left
        store.delete(key)
    while True:
        with svc.Session.begin() as s:
            ids = list(
                s.scalars(select(Message.id).where(Message.conversation_id == cid).limit(batch))
            )
            done += delete_messages(svc, s, ids)[0]
        progress(done)
        if len(ids) < batch:
            break
    with svc.Session.begin() as s:
        s.execute(delete(Notification).where(Notification.conversation_id == cid))
        late_keys = shred_conversation_keys(s, cid)  # made by a post racing the delete
        s.execute(delete(Participant).where(Participant.conversation_id == cid))
        s.execute(delete(DeliveryCursor).where(DeliveryCursor.conversation_id == cid))
        s.execute(delete(Conversation).where(Conversation.id == cid))
    forget_keys(svc, late_keys)
    logger.info("conversation purged", extra={"conversation_id": cid, "items": done})
    return done


class KeyForgetter:
    """Keeps this process's key cache in step with keys shredded by any process.

    Listens on `parley:keys:shredded`; after a reconnect it first replays the recent-shreds set,
    so a key shredded while it was away is forgotten too. One daemon thread per process (a
    greenlet under gevent); started by web/privacy.py on the first request and by
    tasks/retention.py in each worker process.
    """

    def __init__(self, svc: Services, poll_s: float = 1.0) -> None:
        self.svc = svc
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    def start(self) -> KeyForgetter:
        self._thread = threading.Thread(target=self._run, name="key-forgetter", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _forget(self, ids: Sequence[Any]) -> None:
        for dk in ids:
            self.svc.keyring.forget(dk.decode() if isinstance(dk, bytes) else str(dk))

    def _run(self) -> None:
        since = time.time()
        while not self._stop.is_set():
            pubsub = self.svc.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(SHRED_CHANNEL)
                self._forget(self.svc.redis.zrangebyscore(SHREDDED_KEY, since - 5, "+inf"))
                self.ready.set()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=self.poll_s)
                    if msg and msg.get("type") == "message":
                        self._forget(json.loads(msg["data"]))
                    since = time.time()
            except (RedisError, OSError, ValueError):
                logger.warning("key-shred listener reconnecting", exc_info=True)
                self._stop.wait(self.poll_s)
            finally:
                pubsub.close()
