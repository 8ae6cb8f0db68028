"""core/redis_transport.py, kombu's Redis transport keeping one client per channel, on a real
private redis-server."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from kombu import Connection

from celery_config import REDIS_TRANSPORT
from core.celery_app import make_celery
from core.config import load_settings
from core.redis_server import RedisServer
from core.redis_transport import Transport


def test_celery_uses_it_for_redis_brokers_only() -> None:
    def app(broker: str) -> Celery:
        redis = "redis://127.0.0.1:6390/0"  # never connected to
        return make_celery(load_settings({"redis_url": redis, "broker_url": broker}, env_file=None))

    on_redis = app("redis://127.0.0.1:6390/1")
    on_amqp = app("amqp://guest:guest@127.0.0.1:5672//")
    assert on_redis.conf.broker_transport == REDIS_TRANSPORT
    assert on_amqp.conf.broker_transport is None
    with on_redis.connection_for_write() as conn:  # not connected: the transport is chosen
        assert isinstance(conn.transport, Transport)
    with on_amqp.connection_for_write() as conn:
        assert not isinstance(conn.transport, Transport)


def test_puts_gets_and_acks_share_one_client_and_deliver_in_order(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server, Connection(server.url(2), transport=Transport) as conn:
        queue = conn.SimpleQueue("shared-client")
        channel = queue.channel
        for n in range(3):
            queue.put({"n": n})
        got = []
        for _ in range(3):
            message = queue.get(timeout=2)
            got.append(message.payload["n"])
            message.ack()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.llen("shared-client") == 0
            assert first.hlen("unacked") == 0  # every ack reached the server
        assert got == [0, 1, 2]
        queue.close()


def test_a_channel_whose_pool_kombu_replaced_builds_its_client_on_the_new_pool(
    tmp_path: Path,
) -> None:
    """After a fork kombu disconnects the channel's pools and makes new ones on next use
    (`_after_fork`, which its fork hook calls): the shared client must follow, not keep
    the old pool."""
    with RedisServer(tmp_path) as server, Connection(server.url(2), transport=Transport) as conn:
        queue = conn.SimpleQueue("new-pool")
        channel = queue.channel
        with channel.conn_or_acquire() as before:
            pass
        channel._after_fork()
        with channel.conn_or_acquire() as after:
            assert after is not before
            assert after.connection_pool is channel.pool
        queue.put({"n": 1})
        message = queue.get(timeout=2)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()


def test_after_a_redis_restart_publishing_works_again(tmp_path: Path) -> None:
    """A restart drops the pooled sockets the shared client would use: kombu's retrying publish
    goes through, on a new client if kombu replaced the channel's pool."""
    with RedisServer(tmp_path) as server, Connection(server.url(2), transport=Transport) as conn:
        producer = conn.Producer()
        producer.publish({"n": 1}, routing_key="after-restart", retry=True)
        server.restart()  # nothing persisted: the queue is empty again
        producer.publish(
            {"n": 2},
            routing_key="after-restart",
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.1},
        )
        queue = conn.SimpleQueue("after-restart")
        message = queue.get(timeout=2)
        assert message.payload == {"n": 2}
        message.ack()
        queue.close()
