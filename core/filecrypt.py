"""Streaming encryption of file bytes: fixed-size chunks, each sealed with AES-256-GCM.

Files are too large to seal in one piece (that needs the whole file in memory, and a range
request would have to decrypt everything before it). The sealed format is:

    header  = b"PLYF" | version (1 byte) | chunk size (u32, big endian) | nonce prefix (8 bytes)
    chunk i = AES-GCM(key, nonce = prefix | i (u32, big endian),
                      data = plaintext[i*C:(i+1)*C],
                      aad = header | len(context) (u16) | context | final flag (1 byte))

The random prefix keeps nonces unique across files sealed under the same conversation key; the
counter in the nonce keeps chunks from being reordered; the final flag in the associated data
makes a file cut short at a chunk boundary fail to open; the context (e.g. "att:<id>:original")
binds a ciphertext to its attachment and variant, so one copied over another does not open.
A file always has at least one chunk (an empty file is one empty final chunk), so every
plaintext length maps to exactly one ciphertext length and back (`plain_size`).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"PLYF"
VERSION = 1
CHUNK_SIZE = 64 * 1024
TAG_BYTES = 16
PREFIX_BYTES = 8
HEADER = struct.Struct(">4sBI8s")
HEADER_BYTES = HEADER.size  # 17
MAX_CHUNKS = 2**32

# (start, end) → ciphertext bytes of the sealed object in [start, end); end None = to the end.
RangeOpener = Callable[[int, "int | None"], Iterable[bytes]]


class CorruptFile(Exception):
    """The sealed bytes do not open: wrong key or context, tampered, truncated or reordered."""


def _aad(header: bytes, context: bytes, final: bool) -> bytes:
    return header + len(context).to_bytes(2, "big") + context + (b"\x01" if final else b"\x00")


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= MAX_CHUNKS:
        raise ValueError("file too large for the sealed format")
    return prefix + index.to_bytes(4, "big")


def sealed_size(plain: int, chunk_size: int = CHUNK_SIZE) -> int:
    chunks = max(1, -(-plain // chunk_size))
    return HEADER_BYTES + plain + chunks * TAG_BYTES


def plain_size(sealed: int, chunk_size: int = CHUNK_SIZE) -> int:
    body = sealed - HEADER_BYTES
    if body < TAG_BYTES:
        raise CorruptFile("sealed object is shorter than one chunk")
    chunks = -(-body // (chunk_size + TAG_BYTES))
    plain = body - chunks * TAG_BYTES
    if plain < 0 or sealed_size(plain, chunk_size) != sealed:
        raise CorruptFile("sealed object has an impossible length")
    return plain


def seal_stream(
    key: bytes, context: str, chunks: Iterable[bytes], chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Seal a stream of plaintext pieces (any sizes) into the chunked format, lazily.

    Holds at most one chunk plus one incoming piece in memory. The last chunk is only known
    when the input ends, so one full chunk is always held back until more data or the end.
    """
    aead = AESGCM(key)
    prefix = os.urandom(PREFIX_BYTES)
    header = HEADER.pack(MAGIC, VERSION, chunk_size, prefix)
    ctx = context.encode()
    yield header
    buf = bytearray()
    index = 0
    for piece in chunks:
        buf += piece
        while len(buf) > chunk_size:
            block = bytes(buf[:chunk_size])
            del buf[:chunk_size]
            yield aead.encrypt(_nonce(prefix, index), block, _aad(header, ctx, False))
            index += 1
    yield aead.encrypt(_nonce(prefix, index), bytes(buf), _aad(header, ctx, True))


def _exact_blocks(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a byte stream into blocks of exactly `size` (the last may be shorter)."""
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


class SealedFile:
    """Random access to one sealed object: plaintext ranges and a seekable reader.

    `open_range(start, end)` fetches ciphertext bytes (a storage backend's ranged read), so a
    range request decrypts only the chunks it touches.
    """

    def __init__(self, key: bytes, context: str, total: int, open_range: RangeOpener) -> None:
        self._aead = AESGCM(key)
        self._ctx = context.encode()
        self._open = open_range
        self.total = total
        head = b"".join(open_range(0, HEADER_BYTES))
        if len(head) != HEADER_BYTES:
            raise CorruptFile("sealed object has no header")
        magic, version, chunk_size, prefix = HEADER.unpack(head)
        if magic != MAGIC or version != VERSION or not 0 < chunk_size <= 16 * 2**20:
            raise CorruptFile("not a sealed Parley file")
        self.header = head
        self.chunk_size = chunk_size
        self._prefix = prefix
        self.size = plain_size(total, chunk_size)
        self.chunks = max(1, -(-self.size // chunk_size))

    def _offset(self, index: int) -> int:
        return HEADER_BYTES + index * (self.chunk_size + TAG_BYTES)

    def _open_chunk(self, index: int, sealed: bytes) -> bytes:
        final = index == self.chunks - 1
        try:
            return self._aead.decrypt(
                _nonce(self._prefix, index), sealed, _aad(self.header, self._ctx, final)
            )
        except InvalidTag as exc:
            raise CorruptFile(f"chunk {index} does not open") from exc

    def chunks_from(self, first: int, last: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Decrypted chunks first..last (inclusive; None = to the end), read in one pass."""
        last = self.chunks - 1 if last is None else last
        end = min(self.total, self._offset(last + 1))
        pieces = self._open(self._offset(first), end)
        index = first
        for sealed in _exact_blocks(pieces, self.chunk_size + TAG_BYTES):
            yield index, self._open_chunk(index, sealed)
            index += 1
        if index != last + 1:
            raise CorruptFile("sealed object ended early")

    def iter_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Plaintext bytes [start, end), decrypting only the chunks the range touches."""
        end = self.size if end is None else min(end, self.size)
        if self.size == 0:
            for _ in self.chunks_from(0, 0):  # still authenticate the (empty) final chunk
                pass
            return
        if start >= end:
            return
        c = self.chunk_size
        for index, plain in self.chunks_from(start // c, (end - 1) // c):
            base = index * c
            yield plain[max(0, start - base) : min(c, end - base)]

    def reader(self, buffer_size: int = CHUNK_SIZE) -> io.BufferedReader:
        """A seekable binary file object over the plaintext (for zipfile, Pillow...)."""
        return io.BufferedReader(_SealedRaw(self), buffer_size)


class _SealedRaw(io.RawIOBase):
    """Seekable raw reader: keeps one ciphertext stream open while reads are sequential and
    reopens it only on a jump, so a forward read is one request to the backend."""

    def __init__(self, sealed: SealedFile) -> None:
        super().__init__()
        self._f = sealed
        self._pos = 0
        self._stream: Iterator[tuple[int, bytes]] | None = None
        self._next = -1  # index the open stream yields next
        self._index = -1  # index of the chunk held in _plain
        self._plain = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._f.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _chunk(self, index: int) -> bytes:
        if index != self._index:
            if self._stream is None or index != self._next:
                self._stream = self._f.chunks_from(index)
            got, self._plain = next(self._stream)
            self._index, self._next = got, got + 1
        return self._plain

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._pos >= self._f.size or not len(buffer):
            return 0
        c = self._f.chunk_size
        plain = self._chunk(self._pos // c)
        off = self._pos % c
        n = min(len(buffer), len(plain) - off)
        buffer[:n] = plain[off : off + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._stream = None
        super().close()
