"""RabbitMQ works as the broker by setting CELERY_BROKER_URL (invariant 7)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SERVICES, RedisServer, Stack, _make_stack, port_open
from tests.factories import Api, uid, wait_delivered

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def amqp_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    if not port_open("127.0.0.1", 5672):
        SERVICES["rabbitmq"] = "SKIPPED — nothing listens on 127.0.0.1:5672"
        pytest.skip("RabbitMQ unavailable at 127.0.0.1:5672")
    st = _make_stack(
        "amqp",
        f"sqlite:///{tmp_path / 'parley.db'}",
        6,
        redis_server,
        tmp_path,
        broker_url=AMQP_URL,
    )
    SERVICES["rabbitmq"] = f"RabbitMQ at {AMQP_URL} as the Celery broker"
    yield st
    st.worker.stop()
    st.svc.engine.dispose()


def test_messages_flow_through_rabbitmq(amqp_stack: Stack) -> None:
    st = amqp_stack
    assert st.svc.tasks.conf.broker_url.startswith("amqp://")
    st.worker.start(st.app)
    api = Api(st)
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    ids = [api.send(a, cid, f"via rabbit {i}")["id"] for i in range(20)]
    wait_delivered(st, b, ids)
