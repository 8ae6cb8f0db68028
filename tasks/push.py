"""Stage 3: tell recipients who are away (in-app notification, then Web Push/webhook/e-mail).

`notify_offline` takes a fan-out batch, records the collapsed in-app notification of each
offline recipient who wants to hear (not muted, level, mentions), and plans one delivery per
target `PARLEY_PUSH_DELAY_S` ahead. `deliver` runs one delivery: one task per (notification,
target), so a slow or failing endpoint holds up nothing but its own row, and its retries are
new tasks with a countdown rather than a sleeping worker. `sweep` (beat) re-sends deliveries
whose task was lost and expires stale ones. Rules live in domain/; providers in push/.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from core import metrics
from core.events import online_among
from core.ids import utcnow
from core.services import Services, services
from domain import notifications, outbox
from domain.audience import skip_reason
from domain.fanout import NOTIFY_OFFLINE_TASK
from domain.messages import members_of
from domain.push import VERIFY_TASK, email_code
from domain.push_delivery import MAX_COUNTDOWN_S, backoff, finish, prepare
from domain.push_planning import DELIVER_TASK, plan_notify
from domain.render import message_text
from models import Message, PushDelivery, PushSubscription
from push.base import Digest, Outcome, Provider, Result, Target
from tasks.retry import PIPELINE, TEMPORARY

logger = logging.getLogger(__name__)

# A concurrent task inserted the same unread notification first: run again, it now updates.
PUSH_RETRY = {**PIPELINE, "autoretry_for": (*TEMPORARY, IntegrityError)}
SWEEP_BATCH = 500
KEEP_FINISHED = timedelta(days=7)
KEEP_DEAD = timedelta(days=30)


@shared_task(name=NOTIFY_OFFLINE_TASK, **PUSH_RETRY)
def notify_offline(items: list[list[Any]]) -> None:
    """`items`: [message id, [user ids]] pairs from one fan-out batch, oldest first."""
    svc = services()
    online = online_among(svc.redis, (uid for _, user_ids in items for uid in user_ids))
    now = utcnow()
    planned: list[tuple[str, float]] = []
    with svc.Session.begin() as s:
        for message_id, user_ids in items:
            msg = s.get(Message, message_id)
            if msg is None:
                continue
            parts = {p.user_id: p for p in members_of(s, msg.conversation_id)}
            text: list[str | None] = []

            def text_of(m: Message = msg, memo: list[str | None] = text) -> str | None:
                if not memo:
                    memo.append(message_text(svc, m, privileged=True))
                return memo[0]

            away = [
                uid
                for uid in user_ids
                if uid not in online and skip_reason(parts.get(uid), msg, text_of, now) is None
            ]
            notes = notifications.record(s, msg, away)
            planned += plan_notify(svc, s, notes, msg, now)
            if away:
                logger.info(
                    "notified %d offline recipient(s)", len(away), extra={"message_id": msg.id}
                )
    for delivery_id, wait_s in planned:
        _schedule(svc, delivery_id, wait_s)


@shared_task(name=DELIVER_TASK, **PIPELINE)
def deliver(delivery_id: str) -> None:
    """Send one push if it is still wanted; schedule its retry if the target asks for one."""
    svc = services()
    with svc.Session.begin() as s:
        outbox.mark_done(s, [delivery_id], DELIVER_TASK)
        prepared = prepare(svc, s, delivery_id, utcnow())
    if prepared.wait_s is not None:
        _schedule(svc, delivery_id, prepared.wait_s)
        return
    job = prepared.job
    if job is None:
        return
    try:
        result = providers(svc)[job.provider].send(job.target, job.message)
    except Exception as exc:  # a provider bug must not retry forever: record it as permanent
        logger.exception("push provider %s failed on delivery %s", job.provider, delivery_id)
        result = Result(Outcome.PERMANENT, reason=f"provider error: {type(exc).__name__}")
    metrics.push_result(job.provider, result.outcome.value)
    with svc.Session.begin() as s:
        wait = finish(svc, s, job, result, utcnow())
    if wait is not None:
        _schedule(svc, delivery_id, wait)


@shared_task(name=VERIFY_TASK, bind=True, **PIPELINE)
def send_email_code(self: Any, subscription_id: str) -> None:
    """Mail an e-mail subscription its confirmation code (the only mail it gets until then)."""
    svc = services()
    with svc.ReadSession() as s:
        sub = s.get(PushSubscription, subscription_id)
    if sub is not None and sub.verified_at is None:
        code = email_code(svc, sub)
        mail = Digest(
            subject=f"Your confirmation code: {code[:4]}-{code[4:]}",
            body=(
                f"Enter {code[:4]}-{code[4:]} in the app to get message digests at this "
                "address.\n\nIf you did not ask for this, ignore this mail: nothing else will "
                "be sent here."
            ),
        )
        result = providers(svc)["email"].send(Target("email", sub.target), mail)
        metrics.push_result("email", result.outcome.value)
        if result.outcome is Outcome.RETRY:
            raise self.retry(countdown=backoff(svc, self.request.retries + 1))
        if result.outcome is not Outcome.OK:
            logger.warning("confirmation mail refused: %s", result.reason)
    with svc.Session.begin() as s:
        outbox.mark_done(s, [subscription_id], VERIFY_TASK)


@shared_task(name="tasks.push.sweep", **PIPELINE)
def sweep() -> int:
    """Re-send deliveries whose task went missing (lost countdown, crashed lease), expire the
    stale ones and prune old finished rows (dead letters are kept longer, for ops)."""
    svc = services()
    now = utcnow()
    stale = now - timedelta(seconds=max(svc.settings.push_sweep_s, 5.0))
    with svc.Session.begin() as s:
        s.execute(
            update(PushDelivery)
            .where(PushDelivery.state == "pending", PushDelivery.expires_at <= now)
            .values(state="expired", reason="ttl passed before it could be sent", finished_at=now)
        )
        lost = list(
            s.scalars(
                select(PushDelivery)
                .where(
                    or_(
                        and_(PushDelivery.state == "pending", PushDelivery.due_at < stale),
                        and_(PushDelivery.state == "sending", PushDelivery.lease_until < now),
                    )
                )
                .order_by(PushDelivery.due_at)
                .limit(SWEEP_BATCH)
            )
        )
        for row in lost:
            if row.state == "pending":
                row.due_at = now  # due already; not re-sent again until it is stale once more
        s.execute(
            delete(PushDelivery).where(
                PushDelivery.state.in_(("sent", "skipped", "expired", "gone")),
                PushDelivery.finished_at < now - KEEP_FINISHED,
            )
        )
        s.execute(
            delete(PushDelivery).where(
                PushDelivery.state == "dead", PushDelivery.finished_at < now - KEEP_DEAD
            )
        )
    for row in lost:
        _schedule(svc, row.id, 0)
    if lost:
        logger.warning("push sweep re-sent %d delivery task(s)", len(lost))
    return len(lost)


def _schedule(svc: Services, delivery_id: str, wait_s: float) -> None:
    """Run `deliver` later; a lost send is picked up by the sweeper, so failures only log."""
    countdown = min(max(0.0, wait_s), MAX_COUNTDOWN_S)
    try:
        svc.tasks.send_task(DELIVER_TASK, args=[delivery_id], countdown=countdown)
    except Exception as exc:  # broker away: the row stays pending and the sweeper re-sends it
        logger.warning("could not schedule push delivery %s: %s", delivery_id, exc)


_providers: dict[int, dict[str, Provider]] = {}


def providers(svc: Services) -> dict[str, Provider]:
    """One set of providers per process (HTTP connection reuse, the VAPID key loaded once)."""
    found = _providers.get(id(svc))
    if found is None:
        import requests

        from push.email import EmailProvider
        from push.vapid import VapidKey
        from push.webhook import WebhookProvider
        from push.webpush import WebPushProvider

        s = svc.settings
        http = requests.Session()
        http.trust_env = False  # never route pushes through a proxy from the environment
        vapid = VapidKey.load(s.vapid_private_key, s.vapid_subject, s.data_dir)
        found = {
            "webpush": WebPushProvider(vapid, http, s.push_timeout_s, s.push_allow_private_targets),
            "webhook": WebhookProvider(http, s.push_timeout_s, s.push_allow_private_targets),
            "email": EmailProvider(s.smtp_url, s.smtp_from, s.push_timeout_s),
            # the operator's own endpoint, from the environment: internal addresses are fine
            "platform": WebhookProvider(http, s.push_timeout_s, allow_private=True),
        }
        _providers[id(svc)] = found
    return found
