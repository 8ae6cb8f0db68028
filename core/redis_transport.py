"""kombu's Redis transport, with one redis-py client per channel instead of one per operation.

kombu's Redis channel builds a new `redis.Redis` on its connection pool for every publish, and
in a worker for every delivery's bookkeeping and every acknowledgement. Each new client copies
redis-py's table of ~170 response callbacks, upper-casing every key (an open redis-py issue):
in py-spy profiles of a lone sender, ~7% of a solo worker's CPU and ~4% of the web's went to
building clients (docs/performance.md). A redis-py client is safe to share between threads
and greenlets (every command checks a connection out of the pool; pipelines stay per use), so
a channel keeps the one it built, and builds another only when kombu has replaced its pool
(after a fork; a reconnect opens new channels). Nothing else differs from kombu's transport;
celery_config.py selects it for `redis://` brokers.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's BRPOP client: built once by kombu already
            return super()._create_client(asynchronous=True)
        shared = self._shared
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared = super()._create_client()
        return shared


class Transport(kombu_redis.Transport):
    Channel = Channel
