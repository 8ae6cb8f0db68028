"""The postings row layout (domain/search/postings.py) and the order candidates are read in
(domain/search/query.py): pure, no database."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from domain.search import postings
from domain.search.query import BATCH, _tranches


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


def test_times_are_exact_microseconds_and_round_trip() -> None:
    at = datetime(2026, 12, 3, 14, 31, 5, 123457, tzinfo=UTC)
    stamp = postings.micros(at)
    assert postings.EPOCH + timedelta(microseconds=stamp) == at  # no float rounding
    values = postings.times(None)
    assert values == [0] * postings.SEGMENT_SEQS
    values[5], values[127] = stamp, stamp + 1
    assert postings.times(postings.encode_times(values)) == values


def test_candidates_come_in_batches_each_strictly_older_than_the_one_before() -> None:
    """Each batch ends with every candidate of its last time (a batch of messages posted in one
    transaction shares its created_at), so sorting each batch in SQL sorts them all."""
    rng = random.Random(3)
    found = [(rng.randrange(1, 40), f"c{rng.randrange(5)}", seq) for seq in range(1, 500)]
    batches = list(_tranches(list(found), 21))
    assert sorted(c for b in batches for c in b) == sorted(found)
    for before, after in pairwise(batches):
        assert min(c[0] for c in before) > max(c[0] for c in after)
    assert len(batches[0]) >= 21 and all(len(b) >= BATCH for b in batches[1:-1])


def test_candidates_of_unknown_time_make_one_batch() -> None:
    """Messages indexed before the times rows existed: the database sorts all candidates."""
    found = [(0, "c1", 1), *((t, "c2", t) for t in range(1, 300))]
    assert [sorted(b) for b in _tranches(list(found))] == [sorted(found)]
