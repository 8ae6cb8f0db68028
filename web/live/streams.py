"""Reading many users' event streams in one round trip.

A message to a 1,000-member group wakes 1,000 streams at once. A pipeline of 1,000 XRANGEs
costs more in redis-py's pure-Python reply parsing than everything else the hub does, so one
Lua script reads them all and returns a single JSON document (decoded by the C json module).
Fan-out gives every recipient the same `data`, so each distinct payload is decoded once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from core.events import stream_key
from web.live import protocol
from web.live.protocol import StreamId

# KEYS: streams; ARGV: exclusive start per stream ("(<id>"), then COUNT.
# Returns JSON: [[[id, type, data], ...] per stream]. An empty Lua table encodes as {}.
_READ_MANY = """
local count = ARGV[#ARGV]
local out = {}
for i, key in ipairs(KEYS) do
  local rows = redis.call('XRANGE', key, ARGV[i], '+', 'COUNT', count)
  local entries = {}
  for j, row in ipairs(rows) do
    local fields, etype, data = row[2], '', '{}'
    for k = 1, #fields, 2 do
      if fields[k] == 'type' then etype = fields[k + 1]
      elseif fields[k] == 'data' then data = fields[k + 1] end
    end
    entries[j] = {row[1], etype, data}
  end
  out[i] = entries
end
return cjson.encode(out)
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry."""

    sid: StreamId
    id: str
    type: str
    data: dict[str, Any]


class StreamReader:
    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_READ_MANY)

    def read_many(self, starts: Mapping[str, StreamId], count: int) -> dict[str, list[Entry]]:
        """Up to `count` entries after each user's start id, oldest first; users with none
        are left out."""
        if not starts:
            return {}
        users = list(starts)
        raw = self._script(
            keys=[stream_key(u) for u in users],
            args=[*("(" + protocol.format_id(starts[u]) for u in users), count],
        )
        decoded = json.loads(raw)
        payloads: dict[str, dict[str, Any]] = {}
        out: dict[str, list[Entry]] = {}
        for user, rows in zip(users, decoded, strict=True):
            if not rows:  # [] or {} (cjson's empty table)
                continue
            entries = []
            for eid, etype, data_raw in rows:
                data = payloads.get(data_raw)
                if data is None:
                    data = payloads[data_raw] = _decode_data(data_raw)
                ms, _, seq = eid.partition("-")
                entries.append(Entry((int(ms), int(seq or 0)), eid, etype, data))
            out[user] = entries
        return out

    def read(self, user: str, start: StreamId, count: int) -> list[Entry]:
        return self.read_many({user: start}, count).get(user, [])


def _decode_data(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
