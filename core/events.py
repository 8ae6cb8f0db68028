"""Per-user event streams in Redis, appended exactly once per (event, recipient).

Each user has a capped stream (`parley:stream:<user>`); its entry ids are the `id` clients
resume from. Entries carry ids only (message, conversation, seq) — never text: the web process
loads and decrypts at send time. A done-set per event key makes a re-run of the same stage add
nothing, and the wake-up for the web hubs is published in the same script, so one round trip
does append + dedupe + wake for a whole batch of events and their recipients (`append_many`:
the fan-out's batch across conversations).

The wake-up (`parley:wake`) is a JSON object: each woken user id → [id of the entry before the
new one ("0-0" if none), id of the new entry], and under the empty key the event itself
({"type", "data"}: what the entry holds). A hub whose socket is positioned at (or past) that
previous id has nothing to read: the script appended the new entry right after it. Iterating the
object yields the user ids, which is all that older hubs read from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

STREAM_PREFIX = "parley:stream:"
DONE_PREFIX = "parley:done:"
WAKE_CHANNEL = "parley:wake"
DONE_TTL_S = 7 * 24 * 3600

# Appends a batch of events in one round trip. ARGV: maxlen, ttl, wake channel, then per event
# its type, data, recipient count n and the n user ids; KEYS: per event its done-set, then the
# n recipients' streams. Returns, per event, the users that got it now.
_APPEND_MANY = """
local maxlen, ttl, channel = ARGV[1], ARGV[2], ARGV[3]
local all = {}
local a, k = 4, 1
while a <= #ARGV do
  local etype, data, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local done = KEYS[k]
  local woken = {}
  local wake = {[''] = {type = etype, data = data}}
  for i = 1, n do
    local uid = ARGV[a + 2 + i]
    if redis.call('SADD', done, uid) == 1 then
      local stream = KEYS[k + i]
      local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
      local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', etype, 'data', data)
      woken[#woken + 1] = uid
      wake[uid] = {last[1] and last[1][1] or '0-0', id}
    end
  end
  redis.call('EXPIRE', done, ttl)
  if #woken > 0 then
    redis.call('PUBLISH', channel, cjson.encode(wake))
  end
  all[#all + 1] = woken
  a, k = a + 3 + n, k + 1 + n
end
return all
"""


@dataclass(frozen=True)
class Event:
    """One event for `append_many`: appended once per user under `key`."""

    key: str
    type: str
    data: Mapping[str, Any]
    users: Sequence[str]


def stream_key(user_id: str) -> str:
    return STREAM_PREFIX + user_id


class EventLog:
    """Append events to user streams and read them back."""

    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self.redis = client
        self.maxlen = maxlen
        self._append = client.register_script(_APPEND_MANY)

    def append_once(
        self, event_key: str, etype: str, data: Mapping[str, Any], user_ids: Iterable[str]
    ) -> list[str]:
        """Append one event to each user's stream unless already appended under `event_key`.

        Returns the users that got it now (the others had it from an earlier run).
        """
        return self.append_many([Event(event_key, etype, data, list(user_ids))])[0]

    def append_many(self, events: Sequence[Event]) -> list[list[str]]:
        """`append_once` for each event, in order, in one round trip (one script run: a crash
        part-way leaves a prefix appended, which a re-run completes without repeating it).

        Returns, per event, the users that got it now."""
        keys: list[str] = []
        args: list[Any] = [self.maxlen, DONE_TTL_S, WAKE_CHANNEL]
        sent: list[int] = []  # positions of the events that have recipients
        for n, event in enumerate(events):
            users = list(dict.fromkeys(event.users))
            if not users:
                continue
            sent.append(n)
            keys += [DONE_PREFIX + event.key, *(stream_key(u) for u in users)]
            data = json.dumps(event.data, separators=(",", ":"))
            args += [event.type, data, len(users), *users]
        woken: list[list[str]] = [[] for _ in events]
        if sent:
            replies = self._append(keys=keys, args=args) or []
            for n, reply in zip(sent, replies, strict=True):
                woken[n] = [_s(w) for w in reply or []]
        return woken

    def read(self, user_id: str, since: str = "0", count: int = 500) -> list[tuple[str, dict]]:
        """Entries after `since` (exclusive), oldest first."""
        rows: Any = self.redis.xrange(stream_key(user_id), min="(" + since, count=count)
        return [(_s(eid), _decode(fields)) for eid, fields in rows]

    def first_id(self, user_id: str) -> str | None:
        rows: Any = self.redis.xrange(stream_key(user_id), count=1)
        return _s(rows[0][0]) if rows else None


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(fields: Mapping[Any, Any]) -> dict[str, Any]:
    f = {_s(k): _s(v) for k, v in fields.items()}
    return {"type": f["type"], "data": json.loads(f["data"])}


PRESENCE_PREFIX = "parley:presence:"


def is_online(client: redis.Redis, user_id: str) -> bool:
    """A user is online while a web node keeps their presence key alive (see web/live)."""
    return bool(client.exists(PRESENCE_PREFIX + user_id))


def online_among(client: redis.Redis, user_ids: Iterable[str], chunk: int = 1000) -> set[str]:
    """Those of `user_ids` who are online: a web node keeps their presence key alive (see
    web/live/presence.py). One MGET per `chunk` users."""
    users = list(dict.fromkeys(user_ids))
    online: set[str] = set()
    for i in range(0, len(users), chunk):
        part = users[i : i + chunk]
        found: Any = client.mget([PRESENCE_PREFIX + u for u in part])
        online.update(u for u, v in zip(part, found, strict=True) if v is not None)
    return online


# --- live helpers (web/live/: the hub and replay); the functions above are the pipeline's ---

LIVE_CHANNEL = "parley:live"
"""Ephemeral events (typing, presence) between web nodes: never stored, lost if nobody listens."""


def publish_ephemeral(
    client: redis.Redis, etype: str, data: Mapping[str, Any], user_ids: Iterable[str]
) -> None:
    """Fan an ephemeral event to every web node; each hands it to its sockets of `user_ids`."""
    users = list(dict.fromkeys(user_ids))
    if users:
        payload = {"type": etype, "data": dict(data), "to": users}
        client.publish(LIVE_CHANNEL, json.dumps(payload, separators=(",", ":")))


@dataclass(frozen=True)
class StreamBounds:
    """What a reader needs to tell whether resuming after an id would skip trimmed entries."""

    last_id: str  # last id ever generated ("0-0" when the stream never existed)
    first_id: str | None  # oldest entry still present
    ever_trimmed: bool  # entries were removed (MAXLEN or XDEL); True when Redis cannot tell


def stream_bounds(client: redis.Redis, user_id: str) -> StreamBounds:
    """Bounds of a user's stream in one round trip (XINFO STREAM)."""
    try:
        info = client.xinfo_stream(stream_key(user_id))
    except redis.ResponseError:  # no such key: nothing was ever appended (or Redis lost it)
        return StreamBounds("0-0", None, False)
    first = info.get("first-entry")
    added = info.get("entries-added")  # Redis >= 7; older servers cannot tell
    return StreamBounds(
        _s(info["last-generated-id"]),
        _s(first[0]) if first else None,
        True if added is None else int(added) > int(info["length"]),
    )
