"""The wire contract of `GET /v1/ws`: envelopes, stream ids and close codes (docs/websocket.md)."""

from __future__ import annotations

import json
import re
from enum import IntEnum
from functools import lru_cache
from typing import Any

MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 125 bytes with the code


class Close(IntEnum):
    """Close codes this server sends; each tells the client what to do next."""

    GOING_AWAY = 1001  # node shutting down: reconnect (any node) with ?since=<last id>
    TOO_BIG = 1009  # a client frame exceeded the size limit
    INTERNAL = 1011  # the server cannot serve live events here (misconfiguration)
    TOKEN_EXPIRED = 4001  # reconnect with a fresh token and ?since=<last id>
    HEARTBEAT = 4002  # no pong within two ping intervals: the peer looks dead
    TOO_SLOW = 4008  # send queue overflowed: reconnect with ?since=<last id>, nothing is lost
    UNAUTHORIZED = 4401  # no valid user token (in ?token=, the header or an auth frame) in time


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def durable(etype: str, event_id: str, data_json: str) -> str:
    """A durable event's frame, from data already encoded (shared by every viewer alike)."""
    return f'{_type_prefix(etype)}"id":"{event_id}","data":{data_json}}}'


@lru_cache(maxsize=64)
def _type_prefix(etype: str) -> str:
    return f'{{"type":{dumps(etype)},'


def ephemeral(etype: str, data: Any) -> str:
    return dumps({"type": etype, "data": data})


def error(detail: str) -> str:
    return ephemeral("error", {"detail": detail})


PONG = dumps({"type": "pong"})

_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")

StreamId = tuple[int, int]


def parse_id(raw: object) -> StreamId | None:
    """'1712-3' → (1712, 3); '1712' → (1712, 0); anything else → None. Compare as tuples:
    stream ids do not sort as strings ('9-0' > '10-0')."""
    if not isinstance(raw, str):
        return None
    found = _ID.match(raw)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2) or 0)


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def reason(text: str) -> str:
    """Trim a close reason to what fits in a close frame."""
    raw = text.encode()
    if len(raw) <= MAX_REASON_BYTES:
        return text
    return raw[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."
