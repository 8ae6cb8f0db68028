"""Push subscriptions, preview preferences and dead letters: the rules behind /v1/push.

Secrets are sealed under a data key per subscription (associated data names the row), so a
copied ciphertext does not open elsewhere and deleting a subscription shreds its secret. A
webhook's signing secret is shown once, in the creation response, and never again. An e-mail
address gets nothing but a confirmation code until its owner enters that code (double opt-in:
nobody can subscribe someone else's mailbox to digests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.ids import iso, new_id, utcnow
from core.services import Services
from domain import outbox
from domain.errors import Conflict, Forbidden, Invalid, NotFound
from domain.keys import create_data_key
from domain.pagination import decode_cursor, encode_cursor
from domain.principals import Principal
from models import DataKey, PushDelivery, PushPreference, PushSubscription
from models.push import PREVIEW_MODES
from push.base import Target
from push.targets import UnsafeTarget, check_email, check_url

logger = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 20
VERIFY_TASK = "tasks.push.send_email_code"
VERIFY_MAX_WRONG = 10  # wrong codes per subscription and hour (a code has 40 bits)
VERIFY_TRIES_PREFIX = "parley:verify:"
ADDRESS_FIELD = {"webpush": "endpoint", "webhook": "url", "email": "address"}


def _aad(subscription_id: str) -> str:
    return f"pushsub:{subscription_id}"


def subscribe(
    svc: Services, session: Session, user_id: str, body: Mapping[str, Any]
) -> tuple[PushSubscription, bool, str | None]:
    """Create (or, for the same endpoint/address, return) a subscription.

    Returns (subscription, created, webhook secret shown once or None).
    """
    kind: str = body["kind"]
    field = ADDRESS_FIELD[kind]
    try:
        if kind == "email":
            target = check_email(body[field])
        else:
            target = check_url(body[field], allow_private=svc.settings.push_allow_private_targets)
    except UnsafeTarget as exc:
        raise Invalid(f"{field} is not acceptable: {exc}", {field: [str(exc)]}) from exc

    if kind == "webpush":
        # An endpoint is one browser profile: whoever subscribes it last gets its pushes.
        for row in session.scalars(
            select(PushSubscription).where(
                PushSubscription.kind == "webpush", PushSubscription.target == target
            )
        ):
            if row.user_id == user_id:
                _seal(svc, session, row, {"p256dh": body["keys"]["p256dh"], **_auth(body)})
                return row, False, None
            _remove(svc, session, row)
    else:
        found = session.scalar(
            select(PushSubscription).where(
                PushSubscription.user_id == user_id,
                PushSubscription.kind == kind,
                PushSubscription.target == target,
            )
        )
        if found is not None and kind == "email":
            if found.verified_at is None:  # subscribing again mails the code again
                outbox.add(session, VERIFY_TASK, [found.id], ref_id=found.id)
            return found, False, None
        if found is not None:
            raise Conflict(
                f"a webhook for this URL exists ({found.id}); delete it to get a new secret",
                subscription_id=found.id,
            )
    mine = session.scalar(
        select(func.count())
        .select_from(PushSubscription)
        .where(PushSubscription.user_id == user_id)
    )
    if (mine or 0) >= MAX_SUBSCRIPTIONS:
        raise Conflict(f"at most {MAX_SUBSCRIPTIONS} push subscriptions per user; delete one")
    sub = PushSubscription(id=new_id(), user_id=user_id, kind=kind, target=target)
    session.add(sub)
    if kind == "email":  # nothing is mailed to the address until its owner enters the code
        outbox.add(session, VERIFY_TASK, [sub.id], ref_id=sub.id)
    else:  # a browser endpoint or a webhook URL is proven by being given to us
        sub.verified_at = utcnow()
    secret = None
    if kind == "webpush":
        _seal(svc, session, sub, {"p256dh": body["keys"]["p256dh"], **_auth(body)})
    elif kind == "webhook":
        secret = "whsec_" + secrets.token_urlsafe(32)
        _seal(svc, session, sub, {"secret": secret})
    session.flush()
    logger.info("push subscription created", extra={"user_id": user_id})
    return sub, True, secret


def _auth(body: Mapping[str, Any]) -> dict[str, str]:
    return {"auth": body["keys"]["auth"]}


def _seal(svc: Services, session: Session, sub: PushSubscription, data: dict[str, str]) -> None:
    if sub.key_id is None:
        sub.key_id = create_data_key(svc, session, None)
    sub.secret_ct = svc.keyring.seal_text(sub.key_id, json.dumps(data), _aad(sub.id))


def open_target(svc: Services, sub: PushSubscription) -> Target:
    opened: dict[str, str] = {}
    if sub.secret_ct is not None and sub.key_id is not None:
        opened = json.loads(svc.keyring.open_text(sub.key_id, sub.secret_ct, _aad(sub.id)))
    return Target(sub.kind, sub.target, opened)


def list_for(session: Session, user_id: str) -> list[PushSubscription]:
    return list(
        session.scalars(
            select(PushSubscription)
            .where(PushSubscription.user_id == user_id)
            .order_by(PushSubscription.id)
        )
    )


def email_code(svc: Services, sub: PushSubscription) -> str:
    """The code mailed to an e-mail subscription's address: 8 characters (40 bits) from an
    HMAC of the subscription and the address, so nothing is stored and a code made for one
    address proves nothing for another."""
    master = svc.keyring.master.get(svc.keyring.master.current_kid)
    key = hmac.new(master, b"parley-email-verification", hashlib.sha256).digest()
    mac = hmac.new(key, f"{sub.id}:{sub.target}".encode(), hashlib.sha256).digest()
    return base64.b32encode(mac[:5]).decode()


def verify_email(
    svc: Services, session: Session, user_id: str, subscription_id: str, code: str
) -> PushSubscription:
    """Confirm an e-mail subscription with the code mailed to it."""
    sub = session.get(PushSubscription, subscription_id)
    if sub is None or sub.user_id != user_id:
        raise NotFound(f"push subscription {subscription_id} does not exist")
    if sub.kind != "email":
        raise Conflict("only e-mail subscriptions are confirmed with a code")
    if sub.verified_at is None:
        tries = f"{VERIFY_TRIES_PREFIX}{sub.id}"
        if int(svc.redis.get(tries) or 0) >= VERIFY_MAX_WRONG:
            raise Conflict("too many wrong codes for this subscription: try again in an hour")
        given = code.strip().upper().replace("-", "").replace(" ", "")
        if not hmac.compare_digest(given, email_code(svc, sub)):
            pipe = svc.redis.pipeline()
            pipe.incr(tries)
            pipe.expire(tries, 3600)
            pipe.execute()
            raise Invalid("the code does not match", {"code": ["does not match"]})
        sub.verified_at = utcnow()
        logger.info("e-mail subscription confirmed", extra={"user_id": user_id})
    return sub


def unsubscribe(svc: Services, session: Session, user_id: str, subscription_id: str) -> None:
    sub = session.get(PushSubscription, subscription_id)
    if sub is None or sub.user_id != user_id:
        raise NotFound(f"push subscription {subscription_id} does not exist")
    _remove(svc, session, sub)


def remove_gone(svc: Services, session: Session, subscription_id: str) -> bool:
    """The provider says the target is gone (404/410): forget it and its secret."""
    sub = session.get(PushSubscription, subscription_id)
    if sub is None:
        return False
    _remove(svc, session, sub)
    logger.info("push subscription removed: target gone", extra={"user_id": sub.user_id})
    return True


def _remove(svc: Services, session: Session, sub: PushSubscription) -> None:
    session.delete(sub)
    if sub.key_id:
        session.execute(delete(DataKey).where(DataKey.id == sub.key_id))
        svc.keyring.forget(sub.key_id)
    session.flush()


def render_subscription(sub: PushSubscription, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": sub.id,
        "kind": sub.kind,
        ADDRESS_FIELD[sub.kind]: sub.target,
        "created_at": iso(sub.created_at),
        "last_success_at": iso(sub.last_success_at),
        "verified": sub.verified_at is not None,
    }
    if secret is not None:
        out["secret"] = secret
    return out


# --- preview preference ------------------------------------------------------------------------


def stricter(a: str, b: str) -> str:
    """Of two preview modes, the one revealing less (full > sender > id)."""
    return a if PREVIEW_MODES.index(a) >= PREVIEW_MODES.index(b) else b


def preferences(session: Session, settings: Settings, user_id: str) -> dict[str, Any]:
    pref = session.get(PushPreference, user_id)
    chosen = pref.preview if pref is not None else None
    ceiling = settings.push_preview if settings.push_preview in PREVIEW_MODES else "id"
    return {
        "preview": chosen,
        "server_preview": ceiling,
        "effective_preview": stricter(ceiling, chosen) if chosen else ceiling,
    }


def set_preview(session: Session, user_id: str, preview: str | None) -> None:
    pref = session.get(PushPreference, user_id)
    if pref is None:
        session.add(PushPreference(user_id=user_id, preview=preview))
    else:
        pref.preview = preview
    session.flush()


# --- dead letters ------------------------------------------------------------------------------


def dead_letters(
    session: Session, who: Principal, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Failed deliveries, newest first, for the operator (API keys only)."""
    if not who.is_service:
        raise Forbidden("dead letters are listed with a server API key")
    stmt = select(PushDelivery).where(PushDelivery.state == "dead")
    if cursor:
        (before,) = decode_cursor(cursor, ("b",))
        stmt = stmt.where(PushDelivery.id < str(before))
    rows = list(session.scalars(stmt.order_by(PushDelivery.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": d.id,
            "user_id": d.user_id,
            "target": d.target,
            "kind": d.kind,
            "purpose": d.purpose,
            "notification_id": d.notification_id,
            "conversation_id": d.conversation_id,
            "message_id": d.message_id,
            "attempts": d.attempts,
            "last_status": d.last_status,
            "reason": d.reason,
            "created_at": iso(d.created_at),
            "failed_at": iso(d.finished_at),
        }
        for d in rows
    ]
    return items, encode_cursor({"b": rows[-1].id}) if more and rows else None
