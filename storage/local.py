"""Local filesystem backend (the default): one file per key under `$PARLEY_DATA_DIR/files`."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from storage.base import ObjectMissing, check_key

READ_BYTES = 256 * 1024
# tries to make a key's directory and open the temp file in it while deletes prune directories
CREATE_ATTEMPTS = 10


class LocalStorage:
    """Writes go to a temporary file beside the target, are fsynced, then renamed over it:
    rename is atomic on POSIX, so readers never see half a file and a crash leaves only a
    `.tmp-*` file, which `keys()` ignores."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        path = self._path(key)
        fd, tmp = self._create_temp(path)
        written = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for piece in chunks:
                    fh.write(piece)
                    written += len(piece)
                fh.flush()
                os.fsync(fh.fileno())
            # No retry needed here: the temp file keeps its directory (and every parent) non-empty,
            # so a concurrent delete() cannot prune it before the rename.
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return written

    def _create_temp(self, path: Path) -> tuple[int, Path]:
        """Make the key's directory and open a new temp file in it.

        A delete() in another process prunes directories it empties, so the directory can
        vanish between mkdir and open, or during mkdir itself (which then raises
        FileNotFoundError, or FileExistsError when the directory it saw was gone by its
        is-a-directory check). Make it again and retry; the chunks are not consumed yet, so
        this is safe. Bounded, so a real fault (a file where a directory should be) still
        surfaces as an OSError, which the media stage treats as temporary."""
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex}")
        attempts = CREATE_ATTEMPTS
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
            except (FileNotFoundError, FileExistsError):
                attempts -= 1
                if not attempts:
                    raise

    def open(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            fh = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc
        return _read(fh, start, end)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectMissing(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # prune empty directories up to the root, so deleted conversations leave no trace
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            with contextlib.suppress(OSError):
                parent.rmdir()

    def keys(self, prefix: str = "") -> Iterator[str]:
        # os.walk skips directories that a concurrent delete() prunes mid-walk (Path.rglob
        # raises FileNotFoundError); sorting by path parts keeps the order rglob gave.
        found = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            for name in files:
                key = (rel / name).as_posix()
                if not name.startswith(".tmp-") and key.startswith(prefix):
                    found.append(key)
        yield from sorted(found, key=lambda k: k.split("/"))


def _read(fh: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with fh:
        fh.seek(start)
        left = None if end is None else max(0, end - start)
        while left is None or left > 0:
            piece = fh.read(READ_BYTES if left is None else min(READ_BYTES, left))
            if not piece:
                return
            if left is not None:
                left -= len(piece)
            yield piece
