"""Links: schemes, www., bare domains, short and messenger links, and spelled-out dots."""

from __future__ import annotations

import pytest

from moderation import detect
from moderation.url import find_urls


def found(text: str) -> list[str]:
    return [text[s:e] for s, e, _ in find_urls(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Listing: https://www.airbnb.com/rooms/12345678",
            ["https://www.airbnb.com/rooms/12345678"],
        ),
        ("see (https://example.com/a_(b)).", ["https://example.com/a_(b)"]),
        ("check www.mystay.com for rates", ["www.mystay.com"]),
        ("Go to www.rajsarees.in for the catalogue", ["www.rajsarees.in"]),
        ("book on mysite.co.uk and save", ["mysite.co.uk"]),
        ("my website is ramstudio.net, portfolio there", ["ramstudio.net"]),
        ("Visit HTTPS://EXAMPLE.COM/DEALS", ["HTTPS://EXAMPLE.COM/DEALS"]),
        ("http://localhost:3000/test", ["http://localhost:3000/test"]),
    ],
)
def test_links_with_a_scheme_www_or_a_known_tld_are_found(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "link",
    [
        "wa.me/9779841234567",
        "t.me/ramhomestay",
        "paypal.me/johnd",
        "instagram.com/nepal_treks",
        "bit.ly/3xYz9Ab",
        "linktr.ee/priya.designs",
        "zoom.us/j/123456789",
        "amzn.to/3Kx9aBc",
        "maps.app.goo.gl/AbC123xyz",
        "t.me/+AbCdEfGhIjK",
    ],
)
def test_messenger_payment_and_short_links_are_found(link: str) -> None:
    assert found(f"message me on {link} ok") == [link]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("our site is himalayantreks dot com", ["himalayantreks dot com"]),
        ("www dot trekkingnepal dot com", ["www dot trekkingnepal dot com"]),
        ("go to cheapstays(dot)com", ["cheapstays(dot)com"]),
        ("mysite[dot]com for better price", ["mysite[dot]com"]),
        ("Book at www . cheapstays . com", ["www . cheapstays . com"]),
        ("lakesidehomes dotcom", ["lakesidehomes dotcom"]),
    ],
)
def test_spelled_out_dots_are_found(text: str, expected: list[str]) -> None:
    assert found(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Bring a fleece, e.g. a warm one; i.e. it gets cold",
        "The app crashed after updating to v2.10.3",
        "The passport photos are attached as report.pdf",
        "Please see file.txt and photo.jpg and backup.zip",
        "Mr.Smith will meet you at the lobby",
        "Rating is 4.8 out of 5",
        "We arrived late.Next time we will book the early shuttle.",
        "We arrived late.It was raining",
        "done.in the morning we leave",
        "We loved the polka dot curtains",
        "the dot com bubble",
        "Arrive at 8 . Leave at 10",
        "We are at the house.today we relax",
        "Saw it in the news.great place",
    ],
)
def test_abbreviations_files_versions_and_sentences_are_not_links(text: str) -> None:
    assert found(text) == []


def test_english_word_tlds_need_more_than_a_word_before_them() -> None:
    assert found("handicrafts-nepal.store has it") == ["handicrafts-nepal.store"]
    assert found("cafe24.shop and example.shop/menu") == ["cafe24.shop", "example.shop/menu"]
    assert found("ok.thanks, see you in the house.today") == []


def test_an_address_is_not_also_a_link_and_a_number_in_a_link_is_part_of_it() -> None:
    assert [label for *_, label in detect("mail john@gmail.com")] == ["email"]
    assert detect("wa.me/9779841234567") == [(0, 19, "url")]
    link = "https://example.com/contact?to=john@gmail.com"
    assert detect(f"{link} ok") == [(0, len(link), "url")]
