"""Real local receivers for push tests: an HTTP server (push service / webhook endpoint), a
browser's push keys that decrypt what arrives, and an SMTP server (aiosmtpd).

Nothing here imports Parley: the receivers check what reaches them with their own code (RFC
8291 decryption through http_ece, the VAPID JWT through PyJWT, the HMAC through hmac), as a
browser, a push service or a webhook consumer would.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class HttpReceiver:
    """Records every POST; answers with scripted (status, headers) per path, then 201."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.always: dict[str, tuple[int, dict[str, str]]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, headers = receiver._answer(self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        with self.lock:
            self.received.append(Received(path, headers, body, time.monotonic()))
            queue = self.scripts.get(path)
            if queue:
                return queue.pop(0)
            return self.always.get(path, (201, {}))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: tuple[int, dict[str, str]]) -> None:
        with self.lock:
            self.scripts[path] = list(answers)

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int = 1, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {count} request(s) to {path}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Browser:
    """What a browser does on PushManager.subscribe(): a P-256 key pair and a 16-byte auth
    secret, handed to the server with the push service's endpoint; then it decrypts pushes."""

    def __init__(self, receiver: HttpReceiver, name: str) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth_secret = os.urandom(16)
        self.path = f"/push-service/{name}"
        self.endpoint = receiver.url(self.path)

    def subscription(self) -> dict[str, Any]:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "kind": "webpush",
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64e(public), "auth": b64e(self.auth_secret)},
        }

    def decrypt(self, got: Received) -> dict[str, Any]:
        assert got.headers.get("Content-Encoding") == "aes128gcm"
        plain = http_ece.decrypt(
            got.body,
            private_key=self.private_key,
            auth_secret=self.auth_secret,
            version="aes128gcm",
        )
        data: dict[str, Any] = json.loads(plain)
        return data


def verify_vapid(got: Received, server_public_key: str) -> dict[str, Any]:
    """Check `Authorization: vapid t=<JWT>,k=<key>` as a push service would (RFC 8292)."""
    scheme, _, params = got.headers["Authorization"].partition(" ")
    assert scheme == "vapid", scheme
    parts = dict(p.split("=", 1) for p in params.split(","))
    assert parts["k"] == server_public_key, "signed with another key than the one published"
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(parts["k"]))
    origin = "http://" + got.headers["Host"]  # the push service's own origin
    claims: dict[str, Any] = jwt.decode(
        parts["t"], key, algorithms=["ES256"], audience=origin, options={"require": ["exp"]}
    )
    assert claims["exp"] <= time.time() + 24 * 3600
    assert claims["sub"].startswith(("mailto:", "https:"))
    return claims


def signature_ok(secret: str, got: Received) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), got.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, got.headers.get("X-Parley-Signature", ""))


class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it accepts."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[EmailMessage] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                raw = envelope.original_content or envelope.content
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                sink.messages.append(msg)
                return "250 OK"

        self.port = port
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.controller.start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in list(self.messages) if m["To"] == address]

    def wait(self, address: str, count: int = 1, timeout: float = 30) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.to(address)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {count} mail(s) to {address}")

    def stop(self) -> None:
        self.controller.stop()
