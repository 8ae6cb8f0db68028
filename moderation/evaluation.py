"""Precision and recall of the detectors on a labelled corpus (shared by tests and the bench)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moderation.engine import detect
from moderation.policy import LABELS


@dataclass(frozen=True, slots=True)
class Sample:
    """One corpus line: a message and the labels a careful human gives it."""

    text: str
    labels: frozenset[str]


@dataclass(frozen=True, slots=True)
class Score:
    """Message-level counts for one label."""

    label: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


@dataclass(frozen=True, slots=True)
class Miss:
    """A sample the detectors got wrong for one label, for readable test failures."""

    label: str
    kind: str  # "false positive" | "false negative"
    text: str


def load_corpus(path: Path) -> list[Sample]:
    """Read a JSON-lines corpus of `{"text": ..., "labels": [...]}`."""
    samples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            unknown = set(row["labels"]) - set(LABELS)
            if unknown:
                raise ValueError(f"{path}:{number}: unknown labels {sorted(unknown)}")
            samples.append(Sample(text=row["text"], labels=frozenset(row["labels"])))
    return samples


def evaluate(samples: Iterable[Sample]) -> tuple[dict[str, Score], list[Miss]]:
    """Per-label scores of `detect` on `samples`, and every miss."""
    counts = {label: [0, 0, 0] for label in LABELS}
    misses: list[Miss] = []
    for sample in samples:
        found = {label for _, _, label in detect(sample.text)}
        for label in LABELS:
            expected = label in sample.labels
            got = label in found
            if expected and got:
                counts[label][0] += 1
            elif got:
                counts[label][1] += 1
                misses.append(Miss(label, "false positive", sample.text))
            elif expected:
                counts[label][2] += 1
                misses.append(Miss(label, "false negative", sample.text))
    scores: dict[str, Score] = {label: Score(label, *counts[label]) for label in LABELS}
    return scores, misses


def format_scores(scores: Sequence[Score]) -> str:
    """A small fixed-width table of precision and recall per label."""
    rows = [f"{'label':<10} {'precision':>9} {'recall':>7} {'tp':>4} {'fp':>4} {'fn':>4}"]
    for s in scores:
        rows.append(
            f"{s.label:<10} {s.precision:>9.3f} {s.recall:>7.3f} "
            f"{s.true_positives:>4} {s.false_positives:>4} {s.false_negatives:>4}"
        )
    return "\n".join(rows)
