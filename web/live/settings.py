"""Tuning of the live endpoint, read from the environment once per process.

Kept apart from core/config.py (owned by the shared settings) until they move there; every knob
has a default that suits production, and the test suite shrinks some to reach edge cases fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _num(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


@dataclass(frozen=True)
class LiveSettings:
    send_queue: int = 256  # frames buffered per socket before it is closed with 4008
    ping_s: float = 20.0  # server ping interval; no pong by the next ping closes with 4002
    auth_timeout_s: float = 10.0  # time to send a token when none came with the request
    close_grace_s: float = 5.0  # after a close frame, how long the peer has to answer
    sndbuf: int = 0  # SO_SNDBUF per socket in bytes; 0 leaves the kernel's autotuning
    max_frame: int = 64 * 1024  # largest client frame accepted
    typing_interval_s: float = 2.0  # at most one typing event per conversation per socket
    typing_expires_s: float = 6.0  # clients drop a typing indicator after this
    presence_fanout_max: int = 100  # presence events go to conversations this small or smaller

    @property
    def presence_ttl_s(self) -> int:
        """Presence outlives a missed refresh or two, and no more (refresh = every ping)."""
        return max(3, round(self.ping_s * 3))

    @property
    def hub_page(self) -> int:
        """Events the hub reads per user per round: never more than half a send queue."""
        return max(1, min(100, self.send_queue // 2))

    @classmethod
    def from_env(cls) -> LiveSettings:
        return cls(
            send_queue=int(_num("PARLEY_WS_SEND_QUEUE", cls.send_queue)),
            ping_s=_num("PARLEY_WS_PING_S", cls.ping_s),
            auth_timeout_s=_num("PARLEY_WS_AUTH_TIMEOUT_S", cls.auth_timeout_s),
            close_grace_s=_num("PARLEY_WS_CLOSE_GRACE_S", cls.close_grace_s),
            sndbuf=int(_num("PARLEY_WS_SNDBUF", cls.sndbuf)),
            max_frame=int(_num("PARLEY_WS_MAX_FRAME", cls.max_frame)),
            typing_interval_s=_num("PARLEY_WS_TYPING_INTERVAL_S", cls.typing_interval_s),
            typing_expires_s=_num("PARLEY_WS_TYPING_EXPIRES_S", cls.typing_expires_s),
            presence_fanout_max=int(_num("PARLEY_WS_PRESENCE_FANOUT_MAX", cls.presence_fanout_max)),
        )
