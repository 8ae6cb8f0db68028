"""A zip produced as a stream, so an export of any size is built in about one piece of memory
and sealed on its way to storage: no plaintext zip ever touches disk."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator

FLUSH_BYTES = 64 * 1024


class _Pipe:
    """A write-only file for zipfile that hands back what was written, so the zip is produced
    piece by piece in memory (zipfile writes data descriptors to an unseekable file)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._buf)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


def zip_stream(entries: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Zip (name, content pieces) entries lazily: memory stays at about one piece."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, pieces in entries:
            with zf.open(name, "w") as fh:
                for piece in pieces:
                    fh.write(piece)
                    if len(pipe) >= FLUSH_BYTES:
                        yield pipe.take()
            yield pipe.take()
    yield pipe.take()
