"""Signed, expiring download links: the signature is the credential.

A download must work where no bearer token goes (a browser following a link, an `<img src>`),
so the link carries its own proof: an HMAC over what it grants and until when. Nothing is
stored per link, and any process with the master keys can check one.

The signing keys are derived from the master keys (HKDF), never the master keys themselves, and
each purpose salts its own (an export link cannot open an attachment). The newest master key
signs and every listed one verifies, so a master-key rotation breaks no live link; dropping a
key from `PARLEY_MASTER_KEYS` ends the links it signed.

    signer = signer_for(svc, "gdpr-export")
    expires = expiry(svc.settings.download_ttl_s)
    url = f"/v1/privacy/jobs/{job_id}/download?{signer.query(job_id, expires=expires)}"
    ...
    signer.check(job_id, expires=q["exp"], sig=q["sig"])  # or InvalidLink / ExpiredLink (403)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import Signer

from core.ids import utcnow
from core.services import Services
from domain.errors import Forbidden

_ROOT_INFO = b"parley:signed-url:v1"
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{1,100}")  # unpadded base64url, as `sign` writes it

Grant = str | int


class InvalidLink(Forbidden):
    """Not signed by us for exactly these values (forged, altered, or its key was retired)."""


class ExpiredLink(Forbidden):
    """Signed by us, but past its expiry."""


class UrlSigner:
    """Signs and checks (grant, expiry) pairs for one purpose."""

    def __init__(
        self, secrets: Sequence[bytes], purpose: str, renew: str = "ask for a new one"
    ) -> None:
        """`secrets` newest first (as `PARLEY_MASTER_KEYS` lists them); `renew` tells the
        client where a fresh link comes from."""
        if not secrets:
            raise ValueError("a URL signer needs at least one key")
        # itsdangerous takes keys oldest first and signs with the last one
        self._signer = Signer(
            list(reversed(secrets)),
            salt=purpose,
            key_derivation="hmac",
            digest_method=hashlib.sha256,
        )
        self.renew = renew

    @staticmethod
    def _message(grant: Sequence[Grant], expires: int) -> bytes:
        # JSON keeps the fields apart: ("a:b", "c") and ("a", "b:c") sign differently
        return json.dumps([*grant, expires], separators=(",", ":")).encode()

    def sign(self, *grant: Grant, expires: int) -> str:
        """The signature of `grant` until `expires` (Unix seconds), URL-safe base64."""
        return self._signer.get_signature(self._message(grant, expires)).decode()

    def query(self, *grant: Grant, expires: int) -> str:
        """`exp=…&sig=…`, to append to the link's path (and any query of its own)."""
        return f"exp={expires}&sig={self.sign(*grant, expires=expires)}"

    def check(self, *grant: Grant, expires: int, sig: str, now: datetime | None = None) -> None:
        """Return if `sig` is ours for exactly these values and `expires` has not passed."""
        # the alphabet first: base64 decoding would also take padded or otherwise altered forms
        if not _SIGNATURE.fullmatch(sig) or not self._signer.verify_signature(
            self._message(grant, expires), sig
        ):
            raise InvalidLink(f"the download link is not valid; {self.renew}")
        if expires < (now or utcnow()).timestamp():
            raise ExpiredLink(f"the download link has expired; {self.renew}")


@lru_cache(maxsize=64)
def _root_key(master_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_ROOT_INFO).derive(master_key)


def signer_for(svc: Services, purpose: str, renew: str = "ask for a new one") -> UrlSigner:
    """A signer for `purpose` under this process's master keys (newest signs, all verify)."""
    return UrlSigner([_root_key(key) for _, key in svc.keyring.master.keys], purpose, renew)


def expiry(ttl_s: float, now: datetime | None = None) -> int:
    """The Unix second a link made now stops working."""
    return int((now or utcnow()).timestamp() + ttl_s)
