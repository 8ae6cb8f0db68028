"""The wire contract of `GET /v1/ws`: envelopes, stream ids and close codes (docs/websocket.md).

Frames are built here from the table of web/live/frames.py, which /asyncapi.json describes.
"""

from __future__ import annotations

import json
import logging
import re
from enum import IntEnum
from functools import lru_cache
from typing import Any

from web.live.frames import SERVER_FRAMES

logger = logging.getLogger(__name__)

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


# What each close code means for the client (/asyncapi.json lists them).
CLOSE_ADVICE: dict[Close, str] = {
    Close.GOING_AWAY: "the node is shutting down: reconnect, to any node, with since=<last id>",
    Close.TOO_BIG: "a client frame exceeded PARLEY_WS_MAX_FRAME bytes: fix the client",
    Close.INTERNAL: "the server cannot serve live events now: reconnect later with since",
    Close.TOKEN_EXPIRED: "the token expired: reconnect with a fresh token and since=<last id>",
    Close.HEARTBEAT: "no pong to the server's ping within one interval: reconnect with since",
    Close.TOO_SLOW: "the send queue overflowed: reconnect with since=<last id>; nothing is lost",
    Close.UNAUTHORIZED: "no valid user token in time: get a token, reconnect",
}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def durable(etype: str, event_id: str, data_json: str) -> str:
    """A durable event's frame, from data already encoded (shared by every viewer alike)."""
    return f'{_type_prefix(etype)}"id":"{event_id}","data":{data_json}}}'


@lru_cache(maxsize=64)
def _type_prefix(etype: str) -> str:
    """Cached per type, so this warns once per type (the frame itself is still sent: the
    contract passes unknown durable types through)."""
    frame = SERVER_FRAMES.get(etype)
    if frame is None or not frame.durable:
        logger.warning(
            "durable event type %r is not described in web/live/frames.py (nor /asyncapi.json)",
            etype,
        )
    return f'{{"type":{dumps(etype)},'


def ephemeral(etype: str, data: Any = None) -> str:
    """An ephemeral frame (no id) of a type web/live/frames.py describes, with its fields;
    ValueError for anything else, so the code cannot send what the document does not say."""
    frame = SERVER_FRAMES.get(etype)
    if frame is None or frame.durable:
        raise ValueError(f"{etype!r} is not an ephemeral frame of web/live/frames.py")
    if frame.data is None:
        if data is not None:
            raise ValueError(f"{etype!r} frames carry no data")
        return dumps({"type": etype})
    keys = set(data) if isinstance(data, dict) else None
    if keys is None or not frame.data_required <= keys <= frame.data_fields:
        raise ValueError(
            f"{etype!r} data must have {sorted(frame.data_required)} and at most "
            f"{sorted(frame.data_fields)}; got {sorted(keys) if keys is not None else data!r}"
        )
    return dumps({"type": etype, "data": data})


def error(detail: str) -> str:
    return ephemeral("error", {"detail": detail})


PONG = ephemeral("pong")

_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")

StreamId = tuple[int, int]
MAX_SEQ = 2**64 - 1  # (ms, MAX_SEQ): after every id stamped with millisecond `ms`


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
