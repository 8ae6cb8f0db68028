"""Offline push: where a user wants to be reached, and each attempt to reach them there.

Secrets (Web Push keys, webhook signing secrets) are sealed under a data key of their own per
subscription, so deleting the subscription and its key shreds them. Payloads are never stored:
they are rendered from ids at send time, so no message text sits in these tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from core.ids import new_id, utcnow
from models.base import Base

SUBSCRIPTION_KINDS = ("webpush", "webhook", "email")
PREVIEW_MODES = ("full", "sender", "id")
# pending → sending → sent | skipped | expired | gone | dead (dead = a dead letter, kept for ops)
DELIVERY_STATES = ("pending", "sending", "sent", "skipped", "expired", "gone", "dead")
PLATFORM_TARGET = "platform"


class PushSubscription(Base):
    """A Web Push endpoint, a webhook URL or an e-mail address of one user."""

    __tablename__ = "push_subscriptions"
    __table_args__ = (
        Index("uq_push_subscriptions_target", "user_id", "kind", "target", unique=True),
        Index("ix_push_subscriptions_endpoint", "kind", "target"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    # The endpoint URL, webhook URL or e-mail address (needed in clear to reach it).
    target: Mapped[str] = mapped_column(String(2048))
    # Sealed JSON: {"p256dh", "auth"} for Web Push, {"secret"} for webhooks.
    secret_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_success_at: Mapped[datetime | None]
    # E-mail digests: messages created up to here were already mailed.
    digest_watermark: Mapped[datetime | None]
    # When the owner proved the target is theirs: set at creation for Web Push and webhooks,
    # by the code mailed to the address for e-mail (nothing is mailed before that).
    verified_at: Mapped[datetime | None]


class PushPreference(Base):
    """A user's choice of how much a push may reveal (never more than PARLEY_PUSH_PREVIEW)."""

    __tablename__ = "push_preferences"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    preview: Mapped[str | None] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PushDelivery(Base):
    """One push to one target (a subscription, or the platform webhook).

    While `pending`, later messages of the same notification collapse into the row (unique
    per target and collapse key), so a burst becomes one "3 new messages" push. Failed rows
    stay as dead letters for ops.
    """

    __tablename__ = "push_deliveries"
    __table_args__ = (
        Index(
            "uq_push_deliveries_pending",
            "target",
            "collapse_key",
            unique=True,
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
        Index("ix_push_deliveries_state_due", "state", "due_at"),
        Index("ix_push_deliveries_notification", "notification_id"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(26))  # subscription id or "platform"
    kind: Mapped[str] = mapped_column(String(16))  # webpush | webhook | email | platform
    purpose: Mapped[str] = mapped_column(String(16), default="notify")  # notify | retract
    collapse_key: Mapped[str] = mapped_column(String(64))
    notification_id: Mapped[str | None] = mapped_column(String(26))
    conversation_id: Mapped[str | None] = mapped_column(String(26))
    message_id: Mapped[str | None] = mapped_column(String(26))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(String(300))
    attempts: Mapped[int] = mapped_column(default=0)
    last_status: Mapped[int | None]
    due_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
