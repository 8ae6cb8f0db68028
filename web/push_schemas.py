"""Moved to `web.schemas.push` and `web.schemas.notifications`; this name remains only for
web/live/frames.py, which imports NotificationSchema from it."""

from web.schemas.notifications import NotificationSchema

__all__ = ["NotificationSchema"]
