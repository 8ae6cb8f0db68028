"""Web Push (RFC 8030) with payload encryption (RFC 8291, aes128gcm) and VAPID (RFC 8292).

pywebpush encrypts to the browser's keys; the request itself is built here so the headers
that matter are ours: `TTL` (the push service drops it when the device stays away longer),
`Topic` (a later push with the same topic replaces one not yet delivered: collapse and
retraction), `Urgency`. Redirects are never followed: a push service does not redirect, and
following one would step around the private-address guard.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests
from pywebpush import WebPusher

from push.base import Digest, Outcome, Push, Result, Target, classify_http
from push.targets import UnsafeTarget, check_url
from push.vapid import VapidKey

# RFC 8030 §5.4: at most 32 characters of the base64url alphabet.
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_PAYLOAD = 3800  # push services accept 4096 bytes of ciphertext; aes128gcm adds 86+


class WebPushProvider:
    kind = "webpush"

    def __init__(
        self,
        vapid: VapidKey,
        session: requests.Session,
        timeout_s: float,
        allow_private: bool,
    ) -> None:
        self.vapid = vapid
        self.session = session
        self.timeout_s = timeout_s
        self.allow_private = allow_private

    def send(self, target: Target, message: Push | Digest) -> Result:
        assert isinstance(message, Push)
        try:
            check_url(target.address, allow_private=self.allow_private)
        except UnsafeTarget as exc:
            return Result(Outcome.PERMANENT, reason=f"endpoint refused: {exc}")
        body = json.dumps(message.event, separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) > MAX_PAYLOAD:
            return Result(Outcome.PERMANENT, reason="payload too large")
        info: dict[str, Any] = {"endpoint": target.address, "keys": dict(target.secrets)}
        encoded = WebPusher(info).encode(body, "aes128gcm")
        headers = {
            "Authorization": self.vapid.authorization(target.address),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(max(0, int(message.ttl_s))),
            "Urgency": message.urgency,
        }
        if _TOPIC.match(message.topic):
            headers["Topic"] = message.topic
        try:
            resp = self.session.post(
                target.address,
                data=encoded["body"],
                headers=headers,
                timeout=self.timeout_s,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return Result(Outcome.RETRY, reason=f"network: {type(exc).__name__}")
        if 300 <= resp.status_code < 400:
            return Result(Outcome.PERMANENT, resp.status_code, reason="redirects are not followed")
        return classify_http(resp.status_code, resp.headers.get("Retry-After"))
