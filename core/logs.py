"""Logging: one format for web and worker; `LOG_FORMAT=json` for log shippers.

Context (request id, task id) lives in a contextvar set by the web per request and by the
worker per task, so every line carries it without threading it through calls. The request id
travels from web to worker in a Celery message header.

Every field a call passes with `extra=` reaches the line: as `key=value` pairs after the
message in text, as keys of the object in JSON (python-json-logger). There is no list of
allowed fields to keep in step with the call sites, so a new field is never silently dropped.

Only ids reach the logs, never text: callers pass ids, counts and codes. As a backstop, a field
named like message text or a credential (`_REDACTED`) is replaced before any formatter sees it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# What the logging module itself puts on every record; anything else came from `extra=` or the
# bound context. (`taskName` is standard from Python 3.12; the library lists it only there.)
_STANDARD = frozenset({*RESERVED_ATTRS, "taskName"})
# The bound context leads the pairs of a text line, so lines of one request line up.
_CONTEXT_FIRST = ("request_id", "task_id")
_REDACTED = frozenset(
    {"text", "body", "content", "token", "password", "secret", "authorization", "api_key"}
)
REDACTED = "[redacted]"
# Our packages: their records go to our handler; other libraries keep their own logging.
_PACKAGES = ("core", "domain", "web", "tasks", "models", "moderation", "storage", "push")

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


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record (extras and bound context), context first."""
    found = record.__dict__
    out = {key: found[key] for key in _CONTEXT_FIRST if key in found}
    for key, value in found.items():
        if key not in _STANDARD and not key.startswith("_") and key not in out:
            out[key] = value
    return out


class _ContextFilter(logging.Filter):
    """Adds the bound context (a call's own `extra=` wins) and blanks text-like fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        for key in _REDACTED.intersection(record.__dict__):
            setattr(record, key, REDACTED)
        return True


# What makes a text value need quoting: whitespace (as str.isspace: re's \s for str patterns is
# the same Unicode test), a quote or an equals sign.
_QUOTE_IF = re.compile(r'[\s"=]')


def _pair_value(value: Any) -> str:
    """A value that keeps the line splittable on spaces: plain when it can be, JSON if not.

    Every web request writes one line (the access line), so the common kinds take a short way
    with the same result: a plain id is itself, an int or a finite float is what JSON writes."""
    kind = type(value)
    if kind is str:
        if value and _QUOTE_IF.search(value) is None:
            return value
    elif kind is int or (kind is float and math.isfinite(value)):
        return repr(value)
    elif isinstance(value, str) and value and _QUOTE_IF.search(value) is None:
        return value
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`; a traceback follows on the next lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: tuple[int, str] = (-1, "")  # one tuple: a reader never sees half of it

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As logging writes it, with the date and time part made once per second (every
        request writes an access line, and strftime was a fifth of its formatting)."""
        msec = self.default_msec_format
        if datefmt is not None or msec is None:
            return super().formatTime(record, datefmt)
        second, stamp = self._second
        if int(record.created) != second:
            second = int(record.created)
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, stamp)
        return msec % (stamp, record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = " ".join(f"{key}={_pair_value(value)}" for key, value in fields(record).items())
        return f"{line} {pairs}" if pairs else line


def json_formatter() -> JsonFormatter:
    """One JSON object per line; the keys the hand-written formatter used are kept."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={
            "asctime": "ts",
            "levelname": "level",
            "name": "logger",
            "message": "msg",
            "exc_info": "exc",
        },
        json_ensure_ascii=False,
    )


_handler: logging.Handler | None = None


def configure_logging(*, force: bool = False) -> None:
    """Send our packages' records to stderr, in `LOG_FORMAT` at `LOG_LEVEL`.

    Once per process; `force` replaces the handler, reading the environment again.
    """
    global _handler
    if _handler is not None and not force:
        return
    as_json = os.environ.get("LOG_FORMAT", "").lower() == "json"
    # The real stderr: Celery proxies sys.stderr and would re-log each line as a WARNING.
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(json_formatter() if as_json else TextFormatter())
    handler.addFilter(_ContextFilter())
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    for name in _PACKAGES:
        log = logging.getLogger(name)
        if _handler is not None:
            log.removeHandler(_handler)
        log.addHandler(handler)
        log.setLevel(level)
        log.propagate = False
    _handler = handler
