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

Nothing depends on the list for safety: it tells a task which posts to name (and whose request
ids to log), no more. A rider is a committed message with its outbox row. Every task's read of
what waits takes it anyway (oldest first, up to the stage's batch), and the sweeper re-sends
the task of any message not done in time, a task that takes the list too. So a rider whose task
died after its take is moderated by the task's redelivery (or the next task), and if the worker
died after the verdicts' commit but before the fan-out's, the sweeper's task fans it out. A
publish that fails drops the list (`forget`), so the next post sends a task of its own. A list
whose task never comes otherwise (the web process was killed between its push and its publish,
the broker lost the task) expires TTL_S after it was made, whatever rode on it since: the next
post then sends a task, and that task's read of what waits takes the riders (the sweeper's
tasks take the list too, if they come first). Redis unreachable: each flush sends its task as
before.
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
# How long posts may ride on a task that never comes (a web process killed between its push
# and its publish): then the next post sends a task, whose read of what waits takes them.
TTL_S = 2
# The moderation stage's batch: a task takes no more than one transaction's worth (it always
# moderates what it names), and under a backlog the tasks it sends for the rest share them out.
TAKE_AT_MOST = BATCH

Handed = tuple[str, str, str]  # (message id, conversation id, request id or "")


# KEYS[1]: the list; ARGV[1]: its TTL (s), then the posts. The TTL is set by the push that
# makes the list, not refreshed by the ones that ride: a list lives TTL_S at most.
_PUSH = """
local n = 0
for i = 2, #ARGV do
  n = redis.call('RPUSH', KEYS[1], ARGV[i])
end
if n == #ARGV - 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
"""


def hand_over(r: redis.Redis, posts: Sequence[Handed]) -> bool:
    """Push committed posts; True when the list was empty, so the caller must send a task
    (naming them) for the list to be taken."""
    if not posts:
        return False
    entries = [json.dumps(p, separators=(",", ":")) for p in posts]
    length = r.register_script(_PUSH)(keys=[KEY], args=[TTL_S, *entries])
    return int(length) == len(posts)


def forget(r: redis.Redis) -> None:
    """Drop the list: the task its first push sent never reached the broker. Its messages,
    and the posts that rode on it, are the sweeper's (their outbox rows), or taken sooner by
    the next task's read of what waits."""
    r.delete(KEY)


def take(r: redis.Redis) -> tuple[list[Handed], bool]:
    """The posts handed over since the last take (at most TAKE_AT_MOST, oldest first), and
    whether more are left: then the caller sends one more task to take them."""
    pipe = r.pipeline(transaction=True)
    pipe.lpop(KEY, TAKE_AT_MOST)
    pipe.llen(KEY)
    raw, left = pipe.execute()
    posts = [cast(Handed, tuple(json.loads(item))) for item in raw or ()]
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
