"""The public interface the pipeline task relies on: moderate(), Verdict, policy_for()."""

from __future__ import annotations

import random
import string
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from moderation import (
    DEFAULT_POLICIES,
    LABELS,
    Policy,
    Verdict,
    default_lexicon,
    detect,
    moderate,
    policy_for,
)

DIRECT = policy_for("direct")
SUPPORT = policy_for("support")


def test_clean_text_is_allowed_unchanged() -> None:
    text = "Is the apartment free from 2025-10-06? We land at 10:30."
    verdict = moderate(text, DIRECT)
    assert verdict == Verdict(action="allow", labels=[], spans=[], masked=text, reason="")
    assert verdict.to_dict() == {"action": "allow", "labels": []}


def test_a_phone_number_is_masked_exactly_in_a_direct_chat() -> None:
    text = "call me on 555 123 4567 thanks"
    verdict = moderate(text, DIRECT)
    assert verdict.action == "mask"
    assert verdict.labels == ["phone"]
    assert verdict.spans == [(11, 23, "phone")]
    assert verdict.masked == "call me on ************ thanks"
    assert verdict.reason == ""
    assert verdict.to_dict() == {"action": "mask", "labels": ["phone"]}


def test_support_chats_let_contact_details_through_but_mask_profanity() -> None:
    text = "this shit again, email me at help@acme-rentals.com"
    verdict = moderate(text, SUPPORT)
    assert verdict.action == "mask"
    assert verdict.labels == ["email", "profanity"]
    assert verdict.masked == "this **** again, email me at help@acme-rentals.com"


def test_labels_are_sorted_and_distinct_and_spans_sorted() -> None:
    text = "fuck, call 9841234567 or 9851012345, see wa.me/9779841234567, shit"
    verdict = moderate(text, DIRECT)
    assert verdict.labels == sorted(set(verdict.labels)) == ["phone", "profanity", "url"]
    assert verdict.spans == sorted(verdict.spans)
    assert [text[s:e] for s, e, _ in verdict.spans] == [
        "fuck",
        "9841234567",
        "9851012345",
        "wa.me/9779841234567",
        "shit",
    ]


def test_the_strongest_action_wins_and_the_reason_names_its_labels() -> None:
    policy = Policy(profanity="mask", phone="hold", email="reject", url="allow")
    verdict = moderate("damn, mail raj.k@gmail.com or call 9841234567", policy)
    assert verdict.action == "reject"
    assert verdict.reason == "contact details are not allowed: email"
    held = moderate("damn, call 9841234567", policy)
    assert held.action == "hold"
    assert held.reason == "contact details are not allowed: phone"


def test_hold_for_profanity_says_so() -> None:
    verdict = moderate("what the fuck", Policy(profanity="hold"))
    assert verdict.action == "hold"
    assert verdict.reason == "profanity is not allowed"


def test_only_labels_whose_action_is_mask_are_masked_when_a_message_is_held() -> None:
    policy = Policy(profanity="mask", phone="hold")
    text = "shit, call 9841234567"
    verdict = moderate(text, policy)
    assert verdict.action == "hold"
    assert verdict.masked == "****, call 9841234567"


def test_allowed_labels_are_reported_but_leave_the_text_alone() -> None:
    text = "see example.com"
    verdict = moderate(text, Policy())
    assert verdict.action == "allow"
    assert verdict.labels == ["url"]
    assert verdict.masked == text


def test_overlapping_findings_merge_into_one_span_with_the_strongest_label() -> None:
    text = "go to www.fuckthis.com now"
    verdict = moderate(text, Policy(profanity="mask", url="hold"))
    assert verdict.labels == ["profanity", "url"]
    assert verdict.spans == [(6, 22, "url")]
    assert verdict.masked == "go to www.********.com now"


def test_masked_text_keeps_the_length_of_the_original() -> None:
    text = "Email john dot doe at gmail dot com or ring 07700 900123, you bitch"
    verdict = moderate(text, DIRECT)
    assert len(verdict.masked) == len(text)
    assert verdict.masked == "Email ***************************** or ring ************, you *****"


def test_extra_words_and_allow_words_adjust_the_profanity_list_per_call() -> None:
    assert moderate("what a muppet", DIRECT, extra_words=["muppet"]).masked == "what a ******"
    assert moderate("bloody hell", DIRECT, allow_words=["hell"]).action == "allow"
    # the default list is untouched afterwards
    assert moderate("what a muppet", DIRECT).action == "allow"
    assert moderate("bloody hell", DIRECT).action == "mask"


def test_an_extra_word_wins_over_the_default_allow_list() -> None:
    assert moderate("I will kill you", DIRECT, extra_words=["kill"]).labels == ["profanity"]
    assert moderate("I will kill you", DIRECT).labels == []


def test_empty_and_whitespace_text_are_allowed() -> None:
    for text in ("", " ", "\n\t"):
        assert moderate(text, DIRECT) == Verdict(action="allow", masked=text)


def test_detect_returns_raw_spans_before_any_policy() -> None:
    assert detect("shit") == [(0, 4, "profanity")]
    assert detect("shit", lexicon=default_lexicon().extended(allowed=["shit"])) == []


def test_every_default_policy_covers_every_label() -> None:
    for policy in DEFAULT_POLICIES.values():
        assert set(policy.as_dict()) == set(LABELS)


@settings(max_examples=400, deadline=None, database=None)
@given(st.text(max_size=300))
def test_moderate_never_raises_and_keeps_its_promises_on_any_text(text: str) -> None:
    _check_invariants(text, moderate(text, DIRECT))


def test_moderate_never_raises_on_noisy_chat_like_text() -> None:
    """Random mixes of the characters detectors care about (digits, @, dots, leet symbols)."""
    rng = random.Random(20251006)
    alphabet = string.ascii_letters + string.digits + " .@-_()[]{}<>+$*!|/:#,'\u2019" + "é९٣"
    pieces = ["at", "dot", "five", "double", "www.", "http://", "fuck", "@", " ", ".com"]
    for _ in range(2000):
        parts = [rng.choice(pieces) if rng.random() < 0.3 else rng.choice(alphabet)]
        parts += [
            rng.choice(pieces) if rng.random() < 0.2 else rng.choice(alphabet)
            for _ in range(rng.randrange(0, 80))
        ]
        text = "".join(parts)
        _check_invariants(text, moderate(text, DIRECT))


def _check_invariants(text: str, verdict: Verdict) -> None:
    assert verdict.action in ("allow", "mask", "hold", "reject")
    assert verdict.reason != "automatic moderation failed; held for review", text
    assert verdict.labels == sorted(set(verdict.labels))
    assert set(verdict.labels) <= set(LABELS)
    assert len(verdict.masked) == len(text)
    previous_end = 0
    for start, end, label in verdict.spans:
        assert previous_end <= start < end <= len(text)
        assert label in verdict.labels
        previous_end = end
    if verdict.action == "allow":
        assert verdict.masked == text


def test_long_repetitive_inputs_are_handled_like_any_other_text() -> None:
    """Walls of one pattern ("a.a.a.", "1 1 1", "dot dot") once made some regexes backtrack
    quadratically; they must come back with a normal verdict."""
    walls = [
        "a." * 2000,
        "a " * 2000,
        "f u c k " * 500,
        "1 " * 2000,
        "1." * 2000,
        "@" * 4000,
        "dot " * 1000,
        "x at y dot " * 400,
        "a." * 2000 + "@",
        "9 nine " * 600,
    ]
    for text in walls:
        _check_invariants(text, moderate(text, DIRECT))


def test_the_package_imports_no_web_queue_or_database_framework() -> None:
    """moderation/ must stay callable from anywhere: a fresh interpreter importing it loads no
    Flask, Celery, SQLAlchemy or Redis."""
    code = (
        "import sys, moderation\n"
        "heavy = {'flask', 'celery', 'sqlalchemy', 'redis', 'kombu'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
