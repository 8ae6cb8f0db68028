"""The listener that keeps a process's key cache in step with keys shredded anywhere.

Chosen over a short cache TTL because it is immediate, costs nothing per decryption and needs
no change to the keyring (docs/retention.md, "Key caches").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from core.services import Services
from domain.retention.shredding import SHRED_CHANNEL, SHREDDED_KEY

logger = logging.getLogger(__name__)


class KeyForgetter:
    """Keeps this process's key cache in step with keys shredded by any process.

    Listens on `parley:keys:shredded`; after a reconnect it first replays the recent-shreds set,
    so a key shredded while it was away is forgotten too. One daemon thread per process (a
    greenlet under gevent); started by web/privacy.py on the first request and by
    worker.py in each worker process.
    """

    def __init__(self, svc: Services, poll_s: float = 1.0) -> None:
        self.svc = svc
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    def start(self) -> KeyForgetter:
        self._thread = threading.Thread(target=self._run, name="key-forgetter", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _forget(self, ids: Sequence[Any]) -> None:
        for dk in ids:
            self.svc.keyring.forget(dk.decode() if isinstance(dk, bytes) else str(dk))

    def _run(self) -> None:
        since = time.time()
        while not self._stop.is_set():
            pubsub = self.svc.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(SHRED_CHANNEL)
                self._forget(self.svc.redis.zrangebyscore(SHREDDED_KEY, since - 5, "+inf"))
                self.ready.set()
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=self.poll_s)
                    if msg and msg.get("type") == "message":
                        self._forget(json.loads(msg["data"]))
                    since = time.time()
            except (RedisError, OSError, ValueError):
                logger.warning("key-shred listener reconnecting", exc_info=True)
                self._stop.wait(self.poll_s)
            finally:
                pubsub.close()
