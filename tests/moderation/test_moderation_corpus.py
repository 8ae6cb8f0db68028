"""Quality on the labelled corpus: precision >= 0.95 and recall >= 0.90 for every label."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from moderation import LABELS
from moderation.evaluation import Sample, evaluate, format_scores, load_corpus

CORPUS = Path(__file__).with_name("corpus.jsonl")
MIN_PRECISION = 0.95
MIN_RECALL = 0.90


@pytest.fixture(scope="module")
def corpus() -> list[Sample]:
    return load_corpus(CORPUS)


def test_the_corpus_is_large_varied_and_unique(corpus: list[Sample]) -> None:
    assert len(corpus) >= 250
    assert len({s.text for s in corpus}) == len(corpus), "duplicate lines"
    per_label = Counter(label for s in corpus for label in s.labels)
    assert all(per_label[label] >= 40 for label in LABELS), per_label
    clean = sum(1 for s in corpus if not s.labels)
    assert clean >= len(corpus) // 3, "too few negatives"


@pytest.mark.parametrize("label", LABELS)
def test_each_label_meets_its_precision_and_recall_floor(corpus: list[Sample], label: str) -> None:
    scores, misses = evaluate(corpus)
    score = scores[label]
    report = (
        format_scores(list(scores.values()))
        + "\n"
        + "\n".join(f"{m.kind}: {m.text!r}" for m in misses if m.label == label)
    )
    assert score.precision >= MIN_PRECISION, report
    assert score.recall >= MIN_RECALL, report
