"""SQLAlchemy 2 typed models; Alembic migrations live in models/migrations."""

from models.attachments import ATTACHMENT_KINDS, ATTACHMENT_STATES, Attachment
from models.base import Base
from models.conversations import (
    CONVERSATION_STATUSES,
    CONVERSATION_TYPES,
    NOTIFICATION_LEVELS,
    PARTICIPANT_ROLES,
    Conversation,
    DeliveryCursor,
    Participant,
    User,
)
from models.messages import (
    MEDIA_TYPES,
    MESSAGE_STATES,
    MESSAGE_TYPES,
    Message,
    MessageEdit,
    Reaction,
    Report,
)
from models.ops import ApiKey, AuditEntry, DataKey, Job, Notification, Outbox
from models.push import (
    DELIVERY_STATES,
    PREVIEW_MODES,
    SUBSCRIPTION_KINDS,
    PushDelivery,
    PushPreference,
    PushSubscription,
)
from models.search import SearchConversation, SearchPostings

__all__ = [
    "ATTACHMENT_KINDS",
    "ATTACHMENT_STATES",
    "CONVERSATION_STATUSES",
    "CONVERSATION_TYPES",
    "DELIVERY_STATES",
    "MEDIA_TYPES",
    "MESSAGE_STATES",
    "MESSAGE_TYPES",
    "NOTIFICATION_LEVELS",
    "PARTICIPANT_ROLES",
    "PREVIEW_MODES",
    "SUBSCRIPTION_KINDS",
    "ApiKey",
    "Attachment",
    "AuditEntry",
    "Base",
    "Conversation",
    "DataKey",
    "DeliveryCursor",
    "Job",
    "Message",
    "MessageEdit",
    "Notification",
    "Outbox",
    "Participant",
    "PushDelivery",
    "PushPreference",
    "PushSubscription",
    "Reaction",
    "Report",
    "SearchConversation",
    "SearchPostings",
    "User",
]
