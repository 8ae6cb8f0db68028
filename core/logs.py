"""Logging: one format for web and worker; `LOG_FORMAT=json` for log shippers.

Context (request id, task id) lives in a contextvar set by the web per request and by the
worker per task, so every line carries it without threading it through calls. The request id
travels from web to worker in a Celery message header. Only ids reach the logs, never text.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from typing import Any

_FIELDS = (
    "request_id",
    "task_id",
    "message_id",
    "conversation_id",
    "seq",
    "user_id",
    "task",
    "duration_ms",
    "outcome",
)

context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "parley_log_context", default=None
)


def bind(**values: str) -> None:
    """Set context fields for the rest of this request or task."""
    context.set({**(context.get() or {}), **values})


def clear() -> None:
    context.set(None)


def current(name: str) -> str | None:
    return (context.get() or {}).get(name)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        extra = {k: getattr(record, k) for k in _FIELDS if hasattr(record, k)}
        if self.as_json:
            doc: dict[str, Any] = {
                "ts": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "msg": record.getMessage(),
                **extra,
            }
            if record.exc_info:
                doc["exc"] = self.formatException(record.exc_info)
            return json.dumps(doc, default=str)
        line = super().format(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


_configured = False


def configure_logging() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    # The real stderr: Celery proxies sys.stderr and would re-log each line as a WARNING.
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(_Formatter(os.environ.get("LOG_FORMAT", "").lower() == "json"))
    handler.addFilter(_ContextFilter())
    for name in ("core", "domain", "web", "tasks", "models", "moderation", "storage", "push"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        log.propagate = False
