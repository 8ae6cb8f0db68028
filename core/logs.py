"""Logging: one format for web and worker; `LOG_FORMAT=json` for log shippers.

Structured fields (request_id, message_id, conversation_id) passed with `extra=` are printed;
message text never is — only ids reach the logs.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

_FIELDS = ("request_id", "message_id", "conversation_id", "seq", "task_id", "user_id")


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
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(os.environ.get("LOG_FORMAT", "").lower() == "json"))
    root = logging.getLogger("parley")
    for name in ("core", "domain", "web", "tasks", "models", "moderation", "storage"):
        log = logging.getLogger(name)
        log.addHandler(handler)
        log.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
        log.propagate = False
    root.addHandler(handler)
