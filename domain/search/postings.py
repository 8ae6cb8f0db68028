"""The byte layout of one postings row (models.SearchPostings.data), pure.

A row holds one bucket of one segment of a conversation's index:

    n: u16 | w: u8 | tokens: n x i32, ascending | ends: n x u16 (u32 if w = 4) | postings

little-endian. Token i's posting is `postings[ends[i-1]:ends[i]]` (from 0 for i = 0): one byte
per message holding it, the message's seq minus the segment's first seq, ascending. A lookup
unpacks the two arrays (C speed) and bisects; it never decodes the other tokens' postings.

A segment's newest messages are first written to its tail row (bucket `TAIL`, the same
layout, every bucket's tokens): indexing a message then rewrites that one row, not one row
per bucket its tokens fall in (a 20-word message touched 14 of the 16). Once the tail holds
`TAIL_MESSAGES` messages it is folded into the bucket rows and emptied, so the bucket rows
are rewritten once per 16 messages. A lookup reads the tail row beside the token's bucket row.

One more row per segment, bucket `TIMES`, holds no token: the `created_at` of each of the
segment's indexed messages (microseconds since the epoch, i64 each, 0 when none), so a search
can take its candidates newest first in small batches instead of asking the database to sort
all of them (domain/search/query.py). The times are the message rows' own, stored there in
plaintext already.
"""

from __future__ import annotations

import struct
import sys
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import accumulate

SEGMENT_SEQS = 128  # seqs per segment: an offset fits one byte
BUCKETS = 16  # rows per segment; a query reads one of them per token
TIMES = BUCKETS  # the bucket of a segment's times row
TAIL = BUCKETS + 1  # the bucket of a segment's tail row: its newest messages' tokens
TAIL_MESSAGES = 16  # a tail holding this many messages is folded into the bucket rows
_HEAD = struct.Struct("<HB")
_ENDS = {2: struct.Struct("<H"), 4: struct.Struct("<I")}
# A search reads one posting out of each row: on a little-endian machine the token array is
# bisected in place through a memoryview (no tuple of every token is built).
_IN_PLACE = sys.byteorder == "little"
_TIMES = struct.Struct(f"<{SEGMENT_SEQS}q")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Postings = dict[int, bytes]  # token -> ascending offsets, one byte each


def place(seq: int) -> tuple[int, int]:
    """(segment, offset) of a seq."""
    return divmod(seq, SEGMENT_SEQS)


def bucket(token: int) -> int:
    return token & (BUCKETS - 1)


def _arrays(data: bytes) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    n, w = _HEAD.unpack_from(data)
    tokens = struct.unpack_from(f"<{n}i", data, 3)
    ends = struct.unpack_from(f"<{n}{'H' if w == 2 else 'I'}", data, 3 + 4 * n)
    return tokens, ends, 3 + (4 + w) * n


def lookup(data: bytes, token: int) -> bytes:
    """The offsets (one byte each) of the messages holding `token`; empty when none."""
    tokens, ends, base = _arrays(data)
    i = bisect_left(tokens, token)
    if i == len(tokens) or tokens[i] != token:
        return b""
    return data[base + (ends[i - 1] if i else 0) : base + ends[i]]


def find(data: bytes, token: int) -> bytes:
    """`lookup` for the read path: bisects the token array where it lies and reads two ends,
    so a search touches O(log n) of each row it reads, not all its tokens."""
    if not _IN_PLACE:
        return lookup(data, token)
    n, w = _HEAD.unpack_from(data)
    tokens = memoryview(data)[3 : 3 + 4 * n].cast("i")
    i = bisect_left(tokens, token)
    if i == n or tokens[i] != token:
        return b""
    ends, at = _ENDS[w], 3 + 4 * n
    base = at + w * n
    start = ends.unpack_from(data, at + w * (i - 1))[0] if i else 0
    return data[base + start : base + ends.unpack_from(data, at + w * i)[0]]


def decode(data: bytes) -> Postings:
    tokens, ends, base = _arrays(data)
    starts = (0, *ends[:-1])
    return {t: data[base + s : base + e] for t, s, e in zip(tokens, starts, ends, strict=True)}


def encode(postings: Postings) -> bytes:
    if all(postings.values()):  # no emptied posting (the usual case): sorted in C
        tokens = sorted(postings)
    else:
        tokens = sorted(t for t, p in postings.items() if p)
    lists = [postings[t] for t in tokens]
    ends = list(accumulate(map(len, lists)))
    total = ends[-1] if ends else 0
    n = len(tokens)
    w = 2 if total <= 0xFFFF else 4  # long texts in a full segment may need wider ends
    return b"".join(
        (
            _HEAD.pack(n, w),
            struct.pack(f"<{n}i", *tokens),
            struct.pack(f"<{n}{'H' if w == 2 else 'I'}", *ends),
            *lists,
        )
    )


def holds(data: bytes, offset: int) -> bool:
    """Whether any posting of the row may name `offset` (a cheap test before a rewrite)."""
    n, w = _HEAD.unpack_from(data)
    return data.find(bytes((offset,)), 3 + (4 + w) * n) >= 0


def without(postings: Postings, offsets: set[int]) -> bool:
    """Drop `offsets` from every posting, in place (emptied tokens go); True if any changed."""
    if not offsets:
        return False
    changed = False
    for t, p in list(postings.items()):
        if any(b in offsets for b in p):
            kept = bytes(b for b in p if b not in offsets)
            changed = True
            if kept:
                postings[t] = kept
            else:
                del postings[t]
    return changed


def merge(postings: Postings, additions: Mapping[int, set[int] | bytes]) -> bool:
    """Add each token's offsets (a set, or a posting: ascending bytes) to its posting, in
    place; True if any was not there. New messages are the segment's newest, so their offsets
    usually extend a posting at its end, with no set built."""
    changed = False
    for token, offsets in additions.items():
        add = offsets if isinstance(offsets, bytes) else bytes(sorted(offsets))
        if not add:
            continue
        p = postings.get(token)
        if not p:
            postings[token] = add
        elif p[-1] < add[0]:
            postings[token] = p + add
        else:
            merged = bytes(sorted(set(p).union(add)))
            if merged == p:
                continue
            postings[token] = merged
        changed = True
    return changed


def micros(at: datetime) -> int:
    """An aware datetime as whole microseconds since the epoch (exact: no float on the way)."""
    return (at - EPOCH) // _MICROSECOND


def times(data: bytes | None) -> list[int]:
    """A times row's values, one per offset (0: no indexed message there)."""
    return list(_TIMES.unpack(data)) if data else [0] * SEGMENT_SEQS


def stamps(data: bytes | None) -> Sequence[int]:
    """`times` for the read path, which reads a few offsets of each row: on a little-endian
    machine a view of the row, not a list of its 128 values."""
    if data and _IN_PLACE:
        return memoryview(data).cast("q")
    return times(data)


def encode_times(values: list[int]) -> bytes:
    return _TIMES.pack(*values)


def held(rows: Postings) -> set[int]:
    """The offsets the postings name."""
    return set(b"".join(rows.values()))
