"""Envelope encryption at rest.

Master keys (KEKs) come from `PARLEY_MASTER_KEYS` ("kid:base64url,kid:base64url", newest first)
or, for local use, are generated once into `$PARLEY_DATA_DIR/keys/master-keys.json`. Each
conversation has its own data key (DEK), stored wrapped by a master key; text is sealed with
AES-256-GCM under the DEK and bound to its row by the associated data, so a ciphertext copied to
another row does not open. Deleting a DEK makes its ciphertext unreadable (crypto-shredding).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12
KEY_BYTES = 32


class MissingKeyError(Exception):
    """A key needed to open a ciphertext is unknown (rotated away or shredded)."""


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


@dataclass(frozen=True)
class MasterKeys:
    """Ordered master keys; the first is used to wrap new data keys."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def current_kid(self) -> str:
        return self.keys[0][0]

    def get(self, kid: str) -> bytes:
        for k, v in self.keys:
            if k == kid:
                return v
        raise MissingKeyError(f"master key {kid!r} is not configured")

    @classmethod
    def parse(cls, spec: str) -> MasterKeys:
        keys = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            kid, _, material = part.partition(":")
            raw = _b64d(material)
            if not kid or len(raw) != KEY_BYTES:
                raise ValueError(
                    "PARLEY_MASTER_KEYS entries must be 'kid:<base64url of 32 bytes>', newest first"
                )
            keys.append((kid, raw))
        if not keys:
            raise ValueError("PARLEY_MASTER_KEYS is empty")
        return cls(tuple(keys))

    @classmethod
    def load(cls, spec: str, data_dir: Path) -> MasterKeys:
        """Keys from the environment, else from (or generated into) the data dir."""
        if spec:
            return cls.parse(spec)
        path = data_dir / "keys" / "master-keys.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            entry = {"kid": "local-" + _b64e(os.urandom(4)), "key": _b64e(os.urandom(KEY_BYTES))}
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump([entry], fh)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # atomic create-if-absent: concurrent starters agree
            tmp.unlink(missing_ok=True)
        entries = json.loads(path.read_text())
        return cls.parse(",".join(f"{e['kid']}:{e['key']}" for e in entries))

    @staticmethod
    def generate_entry(kid: str) -> str:
        return f"{kid}:{_b64e(os.urandom(KEY_BYTES))}"


def wrap_data_key(master: MasterKeys, dk_id: str, dek: bytes) -> tuple[str, bytes]:
    kid = master.current_kid
    return kid, seal(master.get(kid), dek, b"parley-dek:" + dk_id.encode())


def unwrap_data_key(master: MasterKeys, dk_id: str, kid: str, wrapped: bytes) -> bytes:
    return open_sealed(master.get(kid), wrapped, b"parley-dek:" + dk_id.encode())


WrappedLoader = Callable[[str], "tuple[str, bytes] | None"]


class Keyring:
    """Opens and seals text under per-conversation data keys, caching unwrapped keys.

    `loader(dk_id)` returns (master kid, wrapped key) from the database, or None when the key
    was shredded. The cache is per process; a shredded key stays usable in a process only until
    `forget()` is called, which the shredding code does. Keys derived from a data key
    (`derived_key`) are cached with it and dropped with it.
    """

    def __init__(self, master: MasterKeys, loader: WrappedLoader) -> None:
        self.master = master
        self._loader = loader
        self._cache: dict[str, bytes] = {}
        self._derived: dict[str, dict[bytes, bytes]] = {}  # dk_id -> info -> derived key
        self._lock = threading.Lock()

    def data_key(self, dk_id: str) -> bytes:
        key = self._cache.get(dk_id)
        if key is None:
            found = self._loader(dk_id)
            if found is None:
                raise MissingKeyError(f"data key {dk_id!r} does not exist")
            key = unwrap_data_key(self.master, dk_id, *found)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                    self._derived.clear()
                self._cache[dk_id] = key
        return key

    def derived_key(self, dk_id: str, info: bytes) -> bytes:
        """HKDF-SHA256 (32 bytes, no salt) of the data key for `info`, cached until the data
        key is forgotten (raises MissingKeyError like `data_key`)."""
        key = self._derived.get(dk_id, {}).get(info)
        if key is None:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
            key = hkdf.derive(self.data_key(dk_id))
            with self._lock:
                if len(self._derived) > 10_000:
                    self._derived.clear()
                self._derived.setdefault(dk_id, {})[info] = key
        return key

    def remember(self, dk_id: str, dek: bytes) -> None:
        with self._lock:
            self._cache[dk_id] = dek

    def forget(self, dk_id: str) -> None:
        with self._lock:
            self._cache.pop(dk_id, None)
            self._derived.pop(dk_id, None)

    def seal_text(self, dk_id: str, text: str, aad: str) -> bytes:
        return seal(self.data_key(dk_id), text.encode(), aad.encode())

    def open_text(self, dk_id: str, blob: bytes, aad: str) -> str:
        return open_sealed(self.data_key(dk_id), blob, aad.encode()).decode()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
