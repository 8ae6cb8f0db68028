"""E-mail addresses: plain and the obfuscated ways people write them."""

from __future__ import annotations

import pytest

from moderation.email import find_emails


def found(text: str) -> list[str]:
    return [text[s:e] for s, e, _ in find_emails(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Send it to priya.sharma@gmail.com please", ["priya.sharma@gmail.com"]),
        ("my email is rk_traders@yahoo.co.in", ["rk_traders@yahoo.co.in"]),
        ("mail john@gmail.com. Thanks", ["john@gmail.com"]),
        ("email me at john.doe+airbnb@gmail.com", ["john.doe+airbnb@gmail.com"]),
        ("ANITA.K@HOTMAIL.COM", ["ANITA.K@HOTMAIL.COM"]),
        ("write to marco.rossi@libero.it", ["marco.rossi@libero.it"]),
        ("john@gmail", ["john@gmail"]),
    ],
)
def test_plain_addresses_are_found_with_exact_spans(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to john dot doe at gmail dot com", ["john dot doe at gmail dot com"]),
        ("john[at]gmail[dot]com is my email", ["john[at]gmail[dot]com"]),
        ("mail me at john (at) gmail (dot) com", ["john (at) gmail (dot) com"]),
        ("email: john @ gmail . com", ["john @ gmail . com"]),
        ("john AT gmail DOT com", ["john AT gmail DOT com"]),
        ("drop a mail to rkumar{at}rediffmail{dot}com", ["rkumar{at}rediffmail{dot}com"]),
        ("mail: sara<at>protonmail<dot>com", ["sara<at>protonmail<dot>com"]),
        ("my mail anjali.rai [@] gmail [.] com", ["anjali.rai [@] gmail [.] com"]),
        ("priya.sharma at gmail.com, send", ["priya.sharma at gmail.com"]),
        ("my email is raj at gmail, send details", ["raj at gmail"]),
        ("jane dot smith at hotmail dot co dot uk", ["jane dot smith at hotmail dot co dot uk"]),
        ("send to priya underscore sharma at gmail dot com", None),
        ("j o h n @ g m a i l . c o m", None),
    ],
)
def test_obfuscated_addresses_are_found(text: str, expected: list[str] | None) -> None:
    result = found(text)
    if expected is None:
        assert len(result) == 1 and text.endswith(result[0])
    else:
        assert result == expected


def test_a_provider_named_next_to_a_handle_is_an_address() -> None:
    assert found("my gmail is priyas1990, add me") == ["priyas1990"]
    assert found("My gmail is down today") == []


@pytest.mark.parametrize(
    "text",
    [
        "Let's meet at the cafe near the bus stop",
        "Look at it dot by dot, the pattern is hand painted",
        "@sam can you confirm the pickup time?",
        "Follow us on insta @himalaya.treks",
        "Breakfast is 5 at 10 minutes past",
        "Dinner at 7.30? We're at the hotel.",
        "I'll be at home. It's raining so no hurry.",
        "See you at 5. Thanks again!",
        "Meet at the dot of noon at the main gate",
        "we're cheaper at booking.com",
        "He works at the bank",
        "icon@2x.png is attached",
    ],
)
def test_everyday_at_and_dot_are_not_addresses(text: str) -> None:
    assert found(text) == []
