"""Reading many users' event streams in one round trip, or not at all.

A message to a 1,000-member group wakes 1,000 streams at once. Its wake-up names, per user, the
new entry's id and the id before it (core/events.py), so a socket already at that previous id
needs no read: `parse_wake` turns the wake-up into the entries themselves. Others (behind,
resuming, or woken by an older publisher) read: a pipeline of 1,000 XRANGEs costs more in
redis-py's pure-Python reply parsing than everything else the hub does, so one Lua script reads
them all and returns a single JSON document (decoded by the C json module). Fan-out gives every
recipient the same `data`, so each distinct payload is decoded once.
"""

from __future__ import annotations

import json
from collections.abc import Container, Mapping
from typing import Any, NamedTuple

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


class Entry(NamedTuple):
    """One stream entry (a tuple: a fan-out builds one per recipient)."""

    sid: StreamId
    id: str
    type: str
    data: dict[str, Any]


def parse_wake(
    payload: Mapping[str, Any], users: Container[str]
) -> dict[str, tuple[StreamId, Entry]]:
    """The entries a wake-up announces to `users`: user → (id of the entry before it, entry).
    Users it names without a well-formed pair are left out (they are woken to read)."""
    event = payload.get("")
    if not isinstance(event, dict):
        return {}
    etype, data = str(event.get("type", "")), _decode_data(str(event.get("data", "{}")))
    out: dict[str, tuple[StreamId, Entry]] = {}
    # One script appended them all, mostly within one ms: most users share their new id (and,
    # in a busy group, the one before it), so each distinct id is parsed once and each
    # distinct new entry made once.
    sids: dict[str, StreamId] = {}
    made: dict[str, Entry] = {}
    for user, ids in payload.items():  # a 1,000-member group names 1,000 users: kept lean
        if user not in users or type(ids) is not list or len(ids) != 2:
            continue
        before, new = ids
        try:
            prev = sids.get(before)
            if prev is None:
                prev = sids[before] = _sid(before)
            entry = made.get(new)
            if entry is None:
                entry = made[new] = Entry(_sid(new), new, etype, data)
        except (AttributeError, TypeError, ValueError):  # not a str, or not '<ms>-<seq>'
            continue
        if prev < entry.sid:
            out[user] = (prev, entry)
    return out


def _sid(eid: str) -> StreamId:
    """An id as Redis generates it ('<ms>-<seq>'); ValueError otherwise."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq)


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
                entries.append(Entry(_sid(eid), eid, etype, data))
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
