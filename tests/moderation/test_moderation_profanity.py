"""Profanity: better-profanity's list, whole tokens only, with the obfuscations people type."""

from __future__ import annotations

import pytest

from moderation import Lexicon, default_lexicon
from moderation.profanity import (
    DEFAULT_ALLOWED_WORDS,
    DEFAULT_EXTRA_WORDS,
    better_profanity_words,
    find_profanity,
)


def found(text: str, lexicon: Lexicon | None = None) -> list[str]:
    return [text[s:e] for s, e, _ in find_profanity(text, lexicon or default_lexicon())]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("this is shit", ["shit"]),
        ("What the FUCK.", ["FUCK"]),
        ("what the fuck!!!", ["fuck"]),
        ("you bitches", ["bitches"]),
        ("the host's an asshole", ["asshole"]),
        ("the dickheads next door", ["dickheads"]),
        ("oh for fuck's sake", ["fuck"]),
        ("that bitch's car", ["bitch"]),
        ("this is bull shit", ["bull shit"]),
        ("son of a bitch", ["son of a bitch"]),
        ("what a shitshow", ["shitshow"]),
        ("clusterfuck of a booking", ["clusterfuck"]),
    ],
)
def test_listed_words_phrases_and_compounds_are_found_with_exact_spans(
    text: str, expected: list[str]
) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("this is sh1t", ["sh1t"]),
        ("f*ck this", ["f*ck"]),
        ("Are you f**king kidding", ["f**king"]),
        ("what an a$$", ["a$$"]),
        ("@ss", ["@ss"]),
        ("$hit happens", ["$hit"]),
        ("sh!t sorry", ["sh!t"]),
        ("what an assh0le", ["assh0le"]),
        ("b*tch please", ["b*tch"]),
        ("5h1t", ["5h1t"]),
        ("bi+ch please", ["bi+ch"]),
        ("u r a b1tch", ["b1tch"]),
    ],
)
def test_leetspeak_and_starred_letters_are_caught(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fuuuuck the flight", ["fuuuuck"]),
        ("Holy shiiiit", ["shiiiit"]),
        ("kiss my asssss", ["asssss"]),
    ],
)
def test_stretched_letters_are_caught(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("go f u c k yourself", ["f u c k"]),
        ("f.u.c.k. this app", ["f.u.c.k"]),
        ("s-h-i-t", ["s-h-i-t"]),
        ("f_u_c_k", ["f_u_c_k"]),
        ("what an s.o.b.", ["s.o.b"]),
    ],
)
def test_words_spelled_letter_by_letter_are_caught(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I'm driving down from Scunthorpe",
        "Can you assess the damage?",
        "Economy class or business class?",
        "A welcome cocktail is included",
        "The farmhouse is in Sussex",
        "My therapist recommended it",
        "The grape juice was lovely",
        "assassin's creed night in the cabin",
        "Penistone is the nearest station",
        "Dickens fans will love the library",
        "the cockpit tour, the peacock, the raccoon and a shuttlecock",
        "cumulative rating, cucumber sandwiches, a classic hello",
        "we visited Fukuoka and Matsushita's museum",
        "shell, hello, Essex, Middlesex, analysis, assume, passion",
    ],
)
def test_words_that_merely_contain_a_listed_word_are_clean(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "The door knob on the bathroom is loose",
        "chicken breasts for dinner",
        "a narrow strip of land",
        "the ski slope is 5 minutes away",
        "extra virgin olive oil",
        "I want to report sexual harassment",
        "omg lmao this cat",
        "Thanks so much xx",
        "Is the shag rug washable?",
        "the vacuum doesn't suck properly",
        "shiitake and shitake risotto, and a shitzu puppy for sale",
    ],
)
def test_everyday_words_on_better_profanitys_list_are_allowed(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    "text",
    ["Samsung A55 for sale", "$500 deposit", "call 455 1234", "10am at the 3rd gate", "**Note**"],
)
def test_digits_and_symbols_alone_are_not_read_as_leetspeak(text: str) -> None:
    assert found(text) == []


def test_the_default_lexicon_is_better_profanitys_list_plus_extras_minus_the_allow_list() -> None:
    words = {w.lower() for w in better_profanity_words()} | DEFAULT_EXTRA_WORDS
    lexicon = default_lexicon()
    assert "fuck" in words and "fuck" in lexicon.words
    assert "fck" in lexicon.words
    assert "knob" in words and "knob" not in lexicon.words
    assert lexicon.allowed >= DEFAULT_ALLOWED_WORDS
    assert lexicon.words <= words | {w.replace(" ", "").replace("-", "") for w in words}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("fck this app", ["fck"]), ("ffs, the lift", ["ffs"]), ("what an a-hole", ["a-hole"])],
)
def test_common_chat_spellings_missing_from_the_list_are_added(
    text: str, expected: list[str]
) -> None:
    assert found(text) == expected


def test_a_custom_lexicon_replaces_the_list() -> None:
    lexicon = Lexicon.build(["muppet", "plonker"], allowed=["plonker"])
    assert found("what a muppet, you plonker, shit", lexicon) == ["muppet"]


def test_extending_a_lexicon_is_cached_and_leaves_the_base_untouched() -> None:
    base = default_lexicon()
    first = base.extended(["muppet"], ["damn"])
    assert base.extended(["muppet"], ["damn"]) is first
    assert found("damn muppet", first) == ["muppet"]
    assert found("damn muppet", base) == ["damn"]
