"""The server's VAPID key (RFC 8292): from PARLEY_VAPID_PRIVATE_KEY, or generated once.

Browsers subscribe with the public key (`GET /v1/push/vapid-public-key`) and push services then
only accept pushes signed by its private key, so the key must stay the same across restarts
and be shared by every worker: generated into `$PARLEY_DATA_DIR/keys/vapid-private.pem` with
an atomic create-if-absent, like the master keys.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

TOKEN_LIFETIME_S = 12 * 3600  # RFC 8292 allows at most 24 h


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class VapidKey:
    def __init__(self, vapid: Vapid02, subject: str) -> None:
        self._vapid = vapid
        self.subject = subject

    @classmethod
    def load(cls, private_key: str, subject: str, data_dir: Path) -> VapidKey:
        """From the setting (base64url raw key, DER or PEM), else from/into the data dir."""
        if private_key.strip():
            text = private_key.strip()
            if text.startswith("-----BEGIN"):
                return cls(Vapid02.from_pem(text.encode()), subject)
            return cls(Vapid02.from_string(text), subject)
        path = data_dir / "keys" / "vapid-private.pem"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # concurrent starters agree on one key
            tmp.unlink(missing_ok=True)
        return cls(Vapid02.from_pem(path.read_bytes()), subject)

    @property
    def public_key(self) -> str:
        """base64url of the uncompressed P-256 point: the browser's applicationServerKey."""
        raw = self._vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return _b64e(raw)

    def authorization(self, endpoint: str) -> str:
        """The `Authorization: vapid t=<JWT>,k=<key>` header for one push service origin."""
        parts = urlsplit(endpoint)
        claims = {
            "aud": f"{parts.scheme}://{parts.netloc}",
            "exp": int(time.time()) + TOKEN_LIFETIME_S,
            "sub": self.subject,
        }
        header: str = self._vapid.sign(claims)["Authorization"]
        return header
