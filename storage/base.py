"""The one interface every file backend implements, and the rules for object keys.

Backends store opaque bytes: they never see plaintext (core/filecrypt.py seals before `put`)
and know nothing about attachments. Keys are relative paths of safe characters, so the same
key names a file under the local root and an object in an S3 bucket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Protocol

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,7}")


class ObjectMissing(LookupError):
    """No object under this key."""


class StorageUnavailable(OSError):
    """The backend failed in a way worth retrying (network, 5xx, throttling). Local backends
    raise OSError itself; both are temporary faults to the media stage."""


def check_key(key: str) -> str:
    """Reject keys that could escape the root or mean different things on different backends."""
    if not _KEY.fullmatch(key) or ".." in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    """Whole-object writes, ranged reads. Writes are atomic: a reader sees the old object, the
    new one, or none, never a part; a `put` that fails (its iterable raised) leaves nothing."""

    name: str

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the concatenated chunks under `key` (replacing it); returns the byte count."""
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of the object (end None: to its end) as an iterator of pieces.

        Raises ObjectMissing at call time, not on first iteration."""
        ...

    def size(self, key: str) -> int:
        """Length of the object in bytes; ObjectMissing if absent."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; absent is fine (deletes are retried)."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Keys under a prefix (maintenance and tests; not on any request path)."""
        ...
