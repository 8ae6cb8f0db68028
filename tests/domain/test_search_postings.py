"""The postings row layout (domain/search/postings.py): pure, no database."""

from __future__ import annotations

import random

from domain.search import postings


def test_a_row_round_trips_and_looks_up_each_token() -> None:
    rng = random.Random(7)
    rows = {
        rng.randrange(-(2**31), 2**31): bytes(sorted(rng.sample(range(128), rng.randint(1, 9))))
        for _ in range(300)
    }
    data = postings.encode(rows)
    assert postings.decode(data) == rows
    for t, offsets in rows.items():
        assert postings.lookup(data, t) == offsets
    assert postings.lookup(data, max(rows) + 1) == b""
    assert postings.lookup(postings.encode({}), 5) == b""


def test_rows_past_64_kib_of_postings_use_wide_offsets() -> None:
    rows = {t: bytes(range(128)) for t in range(600)}  # 76,800 posting bytes
    data = postings.encode(rows)
    assert postings.decode(data) == rows
    assert postings.lookup(data, 599) == bytes(range(128))


def test_removing_and_adding_offsets_edits_in_place() -> None:
    rows = {1: bytes([0, 5, 9]), 2: bytes([5])}
    assert postings.holds(postings.encode(rows), 5)
    assert not postings.holds(postings.encode(rows), 7)
    assert postings.without(rows, {5})
    assert rows == {1: bytes([0, 9])}  # token 2 had only offset 5
    assert not postings.without(rows, {42})
    assert postings.merge(rows, {1: {3}}) and rows[1] == bytes([0, 3, 9])
    assert not postings.merge(rows, {1: {3, 9}})
    assert postings.merge(rows, {-8: {127, 4}}) and rows[-8] == bytes([4, 127])


def test_seqs_map_to_segments_and_tokens_to_buckets() -> None:
    assert postings.place(0) == (0, 0)
    assert postings.place(postings.SEGMENT_SEQS + 3) == (1, 3)
    assert {postings.bucket(t) for t in range(-64, 64)} == set(range(postings.BUCKETS))
