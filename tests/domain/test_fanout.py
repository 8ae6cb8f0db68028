"""The fan-out's bookkeeping (domain/fanout.py): the walked marks that let a later task for
the same messages end on one Redis read, written on the round trip that also reads who is
online (whether or not anyone may get a push), and the delivered state. Real SQLite and
PostgreSQL, real Redis; the stage runs here (no worker), as a worker child runs it."""

from __future__ import annotations

from sqlalchemy import select

from core.events import PRESENCE_PREFIX
from domain import fanout, moderation_stage
from models import Message
from tests.conftest import Stack
from tests.factories import Api, uid


def test_walked_marks_are_set_whether_or_not_anyone_may_get_a_push(api: Api, idle: Stack) -> None:
    a, b, c = uid(), uid(), uid()
    quiet, loud = api.conversation(a, b), api.conversation(a, c)
    muted = api.patch(f"/v1/conversations/{quiet}/me", user=b, json={"notification_level": "none"})
    assert muted.status_code == 200, muted.get_json()
    first = api.send(a, quiet, "nobody to push")["id"]  # b asked for no notifications
    assert moderation_stage.still_to_moderate(idle.svc, [(first, quiet)]) == {first: quiet}
    moderation_stage.moderate_and_fan_out(idle.svc, {first: quiet})
    assert fanout.walked(idle.svc, [first]) == [True]
    assert moderation_stage.still_to_moderate(idle.svc, [(first, quiet)]) == {}

    idle.svc.redis.set(PRESENCE_PREFIX + c, 1, ex=30)  # c is online: read with the marks
    second = api.send(a, loud, "c is here")["id"]
    moderation_stage.moderate_and_fan_out(idle.svc, {second: loud})
    assert fanout.walked(idle.svc, [second]) == [True]
    with idle.svc.Session() as s:
        states = dict(
            s.execute(
                select(Message.id, Message.state).where(Message.id.in_([first, second]))
            ).all()
        )
    assert states == {first: "delivered", second: "delivered"}


def test_one_command_writes_the_marks_and_the_lag_and_reads_who_is_online(idle: Stack) -> None:
    svc = idle.svc
    here, away = uid(), uid()
    svc.redis.set(PRESENCE_PREFIX + here, 1, ex=30)
    mids = [uid("m"), uid("m")]
    online = fanout._mark_walked(svc, mids, 12.5, [away, here, away])
    assert online == {here}
    assert fanout.walked(svc, [*mids, uid("m")]) == [True, True, False]
    assert 0 < svc.redis.ttl(fanout.WALKED_PREFIX + mids[0]) <= fanout.WALKED_TTL_S
    assert fanout.lag_ms(svc) == 12.5
    assert 0 < svc.redis.pttl(fanout.LAG_KEY) <= fanout.LAG_TTL_MS

    svc.redis.delete(fanout.LAG_KEY)
    assert fanout._mark_walked(svc, [], None, [here]) == {here}  # no marks, no lag: read only
    assert svc.redis.exists(fanout.LAG_KEY) == 0
