"""Phone numbers: formatted, spaced-out and spelled-out ones, and what only looks like one."""

from __future__ import annotations

import pytest

from moderation import moderate, policy_for
from moderation.phone import find_phones


def found(text: str) -> list[str]:
    return [text[s:e] for s, e, _ in find_phones(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call me on 555 123 4567 thanks", ["555 123 4567"]),
        ("My cell: 415.555.0132", ["415.555.0132"]),
        ("Text me at (415) 555-0132 when you land", ["(415) 555-0132"]),
        ("+1 (555) 123-4567 call anytime", ["+1 (555) 123-4567"]),
        ("My number is +977 9841234567, whatsapp me", ["+977 9841234567"]),
        ("+44 7700 900123 is my UK mobile", ["+44 7700 900123"]),
        ("you can reach me on 07700 900123", ["07700 900123"]),
        ("Call +49 30 12345678 if the gate is closed", ["+49 30 12345678"]),
        ("+91 98765 43210 this is my whatsapp", ["+91 98765 43210"]),
        ("Landline 01-4412345 in Kathmandu", ["01-4412345"]),
        ("Our office: 030/1234567", ["030/1234567"]),
        ("please call me 9841234567 I can't find it", ["9841234567"]),
        ("Mob-9841234567", ["9841234567"]),
        ("our phone number is (020) 7946-0958.", ["(020) 7946-0958"]),
    ],
)
def test_formatted_numbers_are_found_with_exact_spans(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("number is 9 8 4 1 2 3 4 5 6 7", ["9 8 4 1 2 3 4 5 6 7"]),
        ("5 5 5 1 2 3 4 5 6 7 call after 6", ["5 5 5 1 2 3 4 5 6 7"]),
        ("my husband's phone is 98 41 23 45 67", ["98 41 23 45 67"]),
        ("my no is 9841.234.567", ["9841.234.567"]),
        ("9.8.4.1.2.3.4.5.6.7", ["9.8.4.1.2.3.4.5.6.7"]),
        ("cell#9841234567", ["9841234567"]),
        ("ph:9841234567", ["9841234567"]),
    ],
)
def test_spaced_and_dotted_digit_runs_are_found(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "nine eight four one two three four five six seven",
            ["nine eight four one two three four five six seven"],
        ),
        (
            "my num: five five five one two three four five six seven",
            ["five five five one two three four five six seven"],
        ),
        ("98four1two3four5six7 whatsapp", ["98four1two3four5six7"]),
        ("Nine-Eight-Four-One-Two-Three-Four-Five-Six-Seven", None),
        (
            "ring me: oh seven seven double oh nine double oh one two three",
            ["oh seven seven double oh nine double oh one two three"],
        ),
    ],
)
def test_spelled_out_and_mixed_numbers_are_found(text: str, expected: list[str] | None) -> None:
    assert found(text) == (expected or [text])


@pytest.mark.parametrize(
    "text",
    [
        "Can we do 10:30 tomorrow?",
        "I'll be there at 9.45pm",
        "The total comes to $1,250.00 including cleaning",
        "Price is Rs. 15000 per month",
        "We paid NPR 2,50,000 as advance",
        "Budget 15000/- max",
        "Booking for 2025-10-06 to 2025-10-09",
        "Delivered on 2025-10-06T10:30:00",
        "Arriving 06/10/2025, leaving 09/10/2025",
        "Valid from 01.12.2025 until 31.03.2026",
        "Is Oct 6 2025 still open?",
        "Your order #A12345 has shipped",
        "booking ref BK-2024-00917",
        "invoice INV-778812",
        "Order number 40239981 still says processing",
        "Account number 0012345678901 is on the invoice",
        "Tracking number 1Z999AA10123456784",
        "awb 7784 5521 0093",
        "The app crashed after updating to v2.10.3",
        "3 bedrooms, 2 baths, 1500 sq ft",
        "Flat 4, 12 Park Lane, Mumbai 400001",
        "ZIP is 94103-1234",
        "renovated in 2019-2023",
        "Price range 1000-2000 per night",
        "budget 2500000",
        "card 4111 1111 1111 1111",
        "the van arrives at nine",
        "one or two nights, three at most",
        "Pickup 07:15-07:45, return 18:30",
    ],
)
def test_times_prices_dates_ids_and_quantities_are_not_phones(text: str) -> None:
    assert found(text) == []


def test_keycap_emoji_and_non_latin_digits_are_digits() -> None:
    keycaps = "".join(f"{d}\ufe0f\u20e3" for d in "9841234567")
    assert found(f"{keycaps} text me") == [keycaps[:-2]]
    assert found("\u096f\u096e\u096a\u0967\u0968\u0969\u096a\u096b\u096c\u096d ma") == [
        "\u096f\u096e\u096a\u0967\u0968\u0969\u096a\u096b\u096c\u096d"
    ]
    assert found("call \uff19\uff18\uff14\uff11\uff12\uff13\uff14\uff15\uff16\uff17") == [
        "\uff19\uff18\uff14\uff11\uff12\uff13\uff14\uff15\uff16\uff17"
    ]


def test_tens_and_teens_count_as_two_digits() -> None:
    text = "its 9841 twenty three forty five sixty seven"
    assert found(text) == ["9841 twenty three forty five sixty seven"]
    assert found("Three adults, two kids, one dog") == []
    assert found("See you at eight thirty") == []


def test_fewer_than_seven_digits_is_never_a_phone() -> None:
    assert found("call 465123") == []
    assert found("call 4651234") == ["4651234"]


def test_two_numbers_in_one_run_are_two_spans() -> None:
    assert found("9841234567/9851234567 call either") == ["9841234567", "9851234567"]


def test_a_number_next_to_a_date_or_price_is_masked_alone() -> None:
    text = "Paid $1,250.00 on 2025-10-06, call 415-555-0132 if there's an issue"
    verdict = moderate(text, policy_for("direct"))
    assert verdict.masked == text.replace("415-555-0132", "*" * 12)


def test_regions_decide_which_national_numbers_are_possible() -> None:
    # 9 digits: possible in Germany or Nepal-style plans, not in the US alone.
    assert find_phones("call 123 456 789", regions=("US",)) == []
    assert find_phones("call 123 456 789", regions=("DE",)) == [(5, 16, "phone")]
