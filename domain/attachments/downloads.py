"""Signed, expiring download URLs, bound to one user."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

from core.ids import utcnow
from core.services import Services
from domain.errors import Forbidden

_URL_KEY_INFO = b"parley:download-url:v1"


def _url_keys(svc: Services) -> list[bytes]:
    """HMAC keys derived from each master key (never the JWT secret, never a master key as
    is); the newest signs, all verify, so a master-key rotation breaks no live URL."""
    cache: dict[str, bytes] = current_app.extensions.setdefault("parley_url_keys", {})
    keys = []
    for kid, material in svc.keyring.master.keys:
        key = cache.get(kid)
        if key is None:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_URL_KEY_INFO)
            key = cache[kid] = hkdf.derive(material)
        keys.append(key)
    return keys


def _mac(key: bytes, att_id: str, variant: str, expires: int, user_id: str) -> str:
    message = json.dumps([att_id, variant, expires, user_id], separators=(",", ":")).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def download_url(svc: Services, att_id: str, variant: str, user_id: str, expires: int) -> str:
    sig = _mac(_url_keys(svc)[0], att_id, variant, expires, user_id)
    return (
        f"/v1/attachments/{att_id}/content/{variant}"
        f"?u={quote(user_id, safe='')}&exp={expires}&sig={sig}"
    )


def check_signature(
    svc: Services, att_id: str, variant: str, user_id: str, expires: int, sig: str
) -> None:
    """403 unless the signature is ours for exactly these values and has not expired."""
    if not any(
        # bytes: compare_digest refuses non-ASCII str, and `sig` is whatever the client sent
        hmac.compare_digest(_mac(k, att_id, variant, expires, user_id).encode(), sig.encode())
        for k in _url_keys(svc)
    ):
        raise Forbidden("the download link is not valid; ask for a new one")
    if expires < utcnow().timestamp():
        raise Forbidden("the download link has expired; ask for a new one")
