"""Signed webhooks: a JSON POST with `X-Parley-Signature: sha256=<hex HMAC of the body>`.

Used for users' webhook subscriptions (secret returned once at creation, kept sealed) and for
the platform-wide webhook from the environment (the host's own push/SMS stack). The body
carries a timestamp and a delivery id, so a receiver can refuse replays and de-duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import requests

from push.base import Digest, Outcome, Push, Result, Target, classify_http
from push.targets import UnsafeTarget, check_url

SIGNATURE_HEADER = "X-Parley-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookProvider:
    kind = "webhook"

    def __init__(self, session: requests.Session, timeout_s: float, allow_private: bool) -> None:
        self.session = session
        self.timeout_s = timeout_s
        self.allow_private = allow_private

    def send(self, target: Target, message: Push | Digest) -> Result:
        assert isinstance(message, Push)
        try:
            check_url(target.address, allow_private=self.allow_private)
        except UnsafeTarget as exc:
            return Result(Outcome.PERMANENT, reason=f"url refused: {exc}")
        body = json.dumps(message.event, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Parley-Webhook/1",
            "X-Parley-Event": str(message.event.get("type", "")),
            "X-Parley-Delivery": str(message.event.get("id", "")),
            SIGNATURE_HEADER: sign(target.secrets.get("secret", ""), body),
        }
        try:
            resp = self.session.post(
                target.address,
                data=body,
                headers=headers,
                timeout=self.timeout_s,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return Result(Outcome.RETRY, reason=f"network: {type(exc).__name__}")
        if 300 <= resp.status_code < 400:
            return Result(Outcome.PERMANENT, resp.status_code, reason="redirects are not followed")
        return classify_http(resp.status_code, resp.headers.get("Retry-After"))
