"""Opaque keyset cursors: base64url JSON, validated on the way back in."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from domain.errors import Invalid


def encode_cursor(values: Mapping[str, Any]) -> str:
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, keys: Sequence[str]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        return [data[k] for k in keys]
    except (ValueError, KeyError, TypeError) as exc:
        raise Invalid(
            "the cursor is not valid; start again without it", {"cursor": ["invalid cursor"]}
        ) from exc
