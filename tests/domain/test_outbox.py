"""The outbox under group commit: with the broker unreachable, concurrent POSTs are still
committed and answered, and the sweeper sends their tasks once a broker answers."""

from __future__ import annotations

import threading

import redis
from sqlalchemy import select

from domain import ingest_handoff
from domain.messages import MODERATE_TASK
from models import Message, Outbox
from tests.conftest import Stack, free_port, wait_for
from tests.factories import Api, uid


def test_posts_while_the_broker_is_down_are_committed_and_the_sweeper_sends_them(
    api: Api, live: Stack
) -> None:
    """A second app on the same database whose broker is a closed port takes 12 POSTs at
    once: all 202, each row and outbox row committed, nothing sent. The sweeper of the app
    with a broker then sends them, and the worker delivers every one.

    The second app has a Redis db of its own: on a shared one, the posts it hands over
    (domain/ingest_handoff.py) would be taken, and delivered, by the next moderate task of
    the running worker (a previous test's, late behind a backlog, did so once), which is
    the hand-over's own way and would leave the sweeper nothing to prove."""
    from tasks.outbox import sweep
    from web import create_app

    settings = live.svc.settings
    moderate = Outbox.task == MODERATE_TASK  # (the index stage adds rows of its own)
    own_redis = settings.redis_url.rsplit("/", 1)[0] + "/15"  # a db no other test uses
    redis.Redis.from_url(own_redis).flushdb()  # nothing handed over by the other variant
    down = create_app(
        {
            "database_url": settings.database_url,
            "redis_url": own_redis,
            "broker_url": f"redis://127.0.0.1:{free_port()}/0",
            "data_dir": settings.data_dir,
            "jwt_secret": settings.jwt_secret,
            "testing": True,
            "outbox_stale_s": settings.outbox_stale_s,
            "moderation_policies": settings.moderation_policies,
        }
    )
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    token = api.token(a)
    codes: list[int] = []
    start = threading.Barrier(12)

    def post(k: int) -> None:
        start.wait()
        resp = down.test_client().post(
            f"/v1/conversations/{cid}/messages",
            headers={"Authorization": f"Bearer {token}"},
            json={"text": f"while the broker is down {k}"},
        )
        codes.append(resp.status_code)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    down.extensions["parley"].engine.dispose()
    assert codes == [202] * 12
    # each failed publish (from the sender thread, after the answers) lets the next post send
    # a task of its own instead of riding on the one that never reached the broker
    down_redis = redis.Redis.from_url(own_redis)
    wait_for(lambda: not down_redis.exists(ingest_handoff.AT_KEY), 20, 0.1, "the list's time")
    with live.svc.Session() as s:
        mids = list(s.scalars(select(Message.id).where(Message.conversation_id == cid)))
        assert len(mids) == 12
        pending = s.scalars(select(Outbox).where(Outbox.ref_id.in_(mids), moderate)).all()
        assert len(pending) == 12 and all(r.done_at is None for r in pending)

    def swept_and_delivered() -> bool:
        with live.app.app_context():
            sweep()
        with live.svc.Session() as s:
            states = s.scalars(select(Message.state).where(Message.conversation_id == cid))
            return all(state == "delivered" for state in states)

    wait_for(swept_and_delivered, 60, 0.5, "the sweeper to send what the broker missed")
    with live.svc.Session() as s:
        rows = s.scalars(select(Outbox).where(Outbox.ref_id.in_(mids), moderate)).all()
        assert len(rows) == 12 and all(r.done_at is not None for r in rows)
