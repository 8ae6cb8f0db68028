"""Moderation benchmark: detector quality on the labelled corpus and moderate() throughput.

    .venv/bin/python -m bench.moderation [--seconds 2] [--runs 3] [--cpu N]

Quality: precision and recall per label on tests/moderation/corpus.jsonl (message level).
Speed: messages/s of `moderate(text, policy_for("direct"))` on one core (the process is pinned
to one CPU where the OS allows it), each figure the median of --runs runs of at least --seconds.
Two workloads: a realistic mix (every clean corpus line four times, every flagged line once:
about 4 in 5 messages clean, and the clean ones are the digit-heavy hard negatives) and the
corpus as it is (over half flagged). Baselines measured in the same run on the same mix:
better-profanity's own `contains_profanity` per message, and a bare `str.lower().split()`.
Results go to stdout as a table and as JSON to bench/out/moderation.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from better_profanity import profanity  # noqa: E402

from bench import report  # noqa: E402
from moderation import moderate, policy_for  # noqa: E402
from moderation.evaluation import Sample, evaluate, format_scores, load_corpus  # noqa: E402

CORPUS = ROOT / "tests" / "moderation" / "corpus.jsonl"
CLEAN_WEIGHT = 4


def realistic_mix(samples: Sequence[Sample], seed: int = 7) -> list[str]:
    """Clean lines CLEAN_WEIGHT times, flagged lines once, in a fixed shuffled order."""
    texts = [s.text for s in samples for _ in range(CLEAN_WEIGHT if not s.labels else 1)]
    random.Random(seed).shuffle(texts)
    return texts


def throughput(work: Callable[[str], object], texts: Sequence[str], seconds: float) -> float:
    """Messages per second over whole passes of `texts`, for at least `seconds`."""
    done = 0
    start = time.perf_counter()
    while True:
        for text in texts:
            work(text)
        done += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def median_throughput(
    work: Callable[[str], object], texts: Sequence[str], seconds: float, runs: int
) -> tuple[float, list[float]]:
    for text in texts[:50]:  # warm caches (lexicon, compiled patterns, phonenumbers metadata)
        work(text)
    figures = [throughput(work, texts, seconds) for _ in range(runs)]
    return statistics.median(figures), figures


def pin_to_one_cpu(cpu: int | None) -> int | None:
    """Pin this process to one CPU so the figure is a one-core figure."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = cpu if cpu is not None else allowed[-1]
    os.sched_setaffinity(0, {chosen})
    return chosen


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    args = parser.parse_args(argv)

    cpu = pin_to_one_cpu(args.cpu)
    samples = load_corpus(CORPUS)
    scores, misses = evaluate(samples)
    mix = realistic_mix(samples)
    corpus_texts = [s.text for s in samples]
    direct = policy_for("direct")
    profanity.load_censor_words()

    def moderate_direct(text: str) -> object:
        return moderate(text, direct)

    workloads: list[tuple[str, str, Callable[[str], object], Sequence[str]]] = [
        ("moderate_mix", "moderate(), realistic mix", moderate_direct, mix),
        ("moderate_corpus", "moderate(), corpus as is", moderate_direct, corpus_texts),
        (
            "better_profanity_mix",
            "better-profanity contains_profanity, mix",
            profanity.contains_profanity,
            mix,
        ),
        ("lower_split_mix", "str.lower().split(), mix", lambda t: t.lower().split(), mix),
    ]
    speed: dict[str, dict[str, Any]] = {}
    for key, title, work, texts in workloads:
        median, figures = median_throughput(work, texts, args.seconds, args.runs)
        speed[key] = {"title": title, "messages_per_s": median, "runs": figures}
    reference = speed["moderate_mix"]["messages_per_s"]
    for figure in speed.values():
        figure["ratio_to_moderate_mix"] = figure["messages_per_s"] / reference

    print(f"Labelled corpus: {len(samples)} messages ({CORPUS.relative_to(ROOT)})")
    print(format_scores(list(scores.values())))
    for miss in misses:
        print(f"  {miss.label} {miss.kind}: {miss.text!r}")
    print()
    print(
        f"Throughput, one core (cpu {cpu}), median of {args.runs} runs of >= {args.seconds:g} s; "
        f"mix = {len(mix)} messages, {sum(1 for s in samples if not s.labels) * CLEAN_WEIGHT} "
        "of them clean"
    )
    print(f"{'workload':<44} {'msgs/s':>10} {'us/msg':>8} {'x moderate()':>13}")
    for figure in speed.values():
        rate = figure["messages_per_s"]
        print(
            f"{figure['title']:<44} {rate:>10,.0f} {1e6 / rate:>8.1f} "
            f"{figure['ratio_to_moderate_mix']:>13.3f}"
        )
    result = {
        "corpus_size": len(samples),
        "scores": {
            label: {
                "precision": s.precision,
                "recall": s.recall,
                "tp": s.true_positives,
                "fp": s.false_positives,
                "fn": s.false_negatives,
            }
            for label, s in scores.items()
        },
        "throughput": speed,
        "seconds_per_run": args.seconds,
        "runs": args.runs,
        "cpu": cpu,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    summary = [
        report.Figure(
            "moderation",
            "moderate(), realistic mix, one core",
            "msgs/s",
            reference,
            speed["better_profanity_mix"]["messages_per_s"],
            "value >= 20000",
        ),
        *(
            report.Figure("moderation", f"{label} {kind}", "", getattr(s, kind), None, limit)
            for label, s in scores.items()
            for kind, limit in (("precision", "value >= 0.95"), ("recall", "value >= 0.90"))
        ),
    ]
    report.write("moderation", summary, result)
    return result


if __name__ == "__main__":
    main()
