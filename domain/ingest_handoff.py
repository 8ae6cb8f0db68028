"""Posts handed from the web to the moderate stage: one task on its way at a time.

The web used to send a moderate task for every group-commit batch, and with a lone sender a
batch is one post. The stage takes every message waiting, so when posts come faster than
tasks start, a task finds its messages taken by the one before and ends having done nothing:
~40% of the tasks in `bench.peer`'s 1→1, each a Celery publish on the web and a receive, a
pipe to a pool child and an ack on the worker (29% of the service's CPU, with the tasks
that did work).

So committed posts are pushed onto a Redis list, and only the push that finds the list empty
sends a task: while a task is on its way, later posts ride on it. Every moderate task takes the
list before it reads the database, so what it takes was committed before its read; a post
pushed after the take finds the list empty and sends its own task. A task takes at most
TAKE_AT_MOST, and sends one more task when it leaves some behind.

The list carries every rider until a task takes it: a task that leaves posts behind sends the
next, so a burst is taken TAKE_AT_MOST at a time however long it is. What if no task comes (the
web process was killed between its push and its publish, the broker lost the task)? A list
nobody has taken from for STALE_S gets one more task from the next push (under a backlog that
is one extra task every STALE_S, which finds little to do), and a publish that fails lets the
next push send one at once (`forget`). If no post comes after, the sweeper re-sends each
rider's task from its outbox row, and those tasks take the list too. A rider whose task died
after its take is still waiting in the database: the task's redelivery, or any task's read of
what waits, takes it; if the worker died after the verdicts' commit and before the fan-out's,
the sweeper's task fans it out. Redis unreachable: each flush sends its task as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import cast

import redis

from core import logs
from core.services import Services
from domain import outbox
from domain.messages import MODERATE_BATCH_TASK
from domain.moderation_stage import BATCH

logger = logging.getLogger(__name__)

KEY = "parley:moderate:handed"
# When the list was last made or taken from (ms, Redis's clock): a list nobody has taken from
# for STALE_S gets one more task from the next push. Its task may never come: the web process
# was killed between its push and its publish, or the broker lost the task.
AT_KEY = "parley:moderate:handed:at"
STALE_S = 2.0
TTL_S = 60  # the list from its last push, its time from when set: what a stopped service leaves
# The moderation stage's batch: a task takes no more than one transaction's worth (it always
# moderates what it names), and under a backlog the tasks it sends for the rest share them out.
TAKE_AT_MOST = BATCH

Handed = tuple[str, str, str]  # (message id, conversation id, request id or "")

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)"
# KEYS: the list, its time; ARGV: STALE_S in ms, TTL_S, then the posts. Returns 1 when the
# caller must send a task: the push made the list, or nobody has taken from it for STALE_S.
_PUSH = f"""
local n = 0
for i = 3, #ARGV do
  n = redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
{_NOW_MS}
local at = tonumber(redis.call('GET', KEYS[2])) or 0
if n == #ARGV - 2 or now - at >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], now, 'EX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: the list, its time; ARGV: how many at most, TTL_S. Returns {the posts, how many are
# left}; the list's time is reset when some are left (the caller sends a task for them).
_TAKE = f"""
local got = redis.call('LPOP', KEYS[1], ARGV[1])
local left = redis.call('LLEN', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[2])
else
  {_NOW_MS}
  redis.call('SET', KEYS[2], now, 'EX', ARGV[2])
end
return {{got or {{}}, left}}
"""


def hand_over(r: redis.Redis, posts: Sequence[Handed]) -> bool:
    """Push committed posts; True when the caller must send a task (naming them) for the
    list to be taken: the list was empty, or nobody has taken from it for STALE_S."""
    if not posts:
        return False
    entries = [json.dumps(p, separators=(",", ":")) for p in posts]
    send = r.register_script(_PUSH)(keys=[KEY, AT_KEY], args=[int(STALE_S * 1000), TTL_S, *entries])
    return bool(send)


def forget(r: redis.Redis) -> None:
    """Let the next push send a task: the one the last push sent never reached the broker.
    The posts on the list stay for that task to take (their outbox rows are the sweeper's
    anyway)."""
    r.delete(AT_KEY)


def take(r: redis.Redis) -> tuple[list[Handed], bool]:
    """The posts handed over since the last take (at most TAKE_AT_MOST, oldest first), and
    whether more are left: then the caller sends one more task to take them."""
    raw, left = r.register_script(_TAKE)(keys=[KEY, AT_KEY], args=[TAKE_AT_MOST, TTL_S])
    posts = [cast(Handed, tuple(json.loads(item))) for item in raw]
    return posts, int(left) > 0


def with_handed(
    svc: Services, messages: list[tuple[str, str | None]]
) -> list[tuple[str, str | None]]:
    """A moderate task's messages and the posts it takes from the list (see the module's
    docstring), their request ids added to its log context; one more task is sent at once
    when the take leaves posts behind."""
    try:
        handed, more = take(svc.redis)
    except redis.RedisError as exc:  # nothing to take: the task has its own messages
        logger.warning("moderate: hand-over list unreadable: %s", exc)
        return messages
    if more:
        outbox.send_many(svc.tasks, [(MODERATE_BATCH_TASK, [[]], None)])
    if not handed:
        return messages
    rids = [r for r in (logs.current("request_id") or "").split(",") if r]
    rids += [rid for _, _, rid in handed if rid]
    if rids:
        logs.bind(request_id=",".join(dict.fromkeys(rids)))
    named = dict(messages)
    for mid, cid, _ in handed:
        named.setdefault(mid, cid)
    return list(named.items())
