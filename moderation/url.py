"""Link spans: with a scheme, www., bare domains, messenger/payment short links, spelled dots.

A bare "name.tld" only counts when the TLD is in a curated set (see `domains`), so file names
("report.pdf"), abbreviations ("e.g.", "Mr.Smith"), versions ("v2.10.3"), decimals and a missing
space after a full stop ("late.Next") stay clean.
"""

from __future__ import annotations

import re

from moderation.domains import (
    AMBIGUOUS_TLDS,
    KNOWN_LINK_DOMAINS,
    SECOND_LEVEL,
    SPOKEN_TLDS,
    URL_TLDS,
    WORD_TLDS,
)
from moderation.text import lower_keeping_offsets, words_of
from moderation.verdict import Span

_URL_CHARS = r"[^\s<>\"'`]"
_SCHEME_RE = re.compile(rf"\b(?:https?|ftp)://{_URL_CHARS}+")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_BARE_RE = re.compile(
    rf"(?<![\w@.\-/])(?P<domain>(?:{_LABEL}\.)+(?P<tld>[a-z]{{2,24}}))(?![\w-])"
    rf"(?P<path>[/?#]{_URL_CHARS}*)?",
)
# " dot ", "(dot)", " . ", and "dot" glued to the TLD ("example dotcom")
_SPOKEN_DOT = (
    r"(?:\s+dot\s+|\s?[\[\(\{<]\s?dot\s?[\]\)\}>]\s?|\s+\.\s+|\s+dot(?=(?:com|net|org)\b))"
)
# At most six labels: real domains are shorter, and the bound keeps "dot dot dot ..." linear.
_SPOKEN_RE = re.compile(rf"(?<![\w.@-]){_LABEL}(?:{_SPOKEN_DOT}{_LABEL}){{1,6}}")
_SPOKEN_SPLIT_RE = re.compile(_SPOKEN_DOT)
_BARE_HINT_RE = re.compile(r"[a-z0-9]\.[a-z]")
_TRAILING_PUNCTUATION = ".,;:!?'\")]}"
# Words that start sentences, not domains: "the dot com bubble", "connect the dots".
_NOT_A_SITE = words_of("the a an this that my your our his her their polka")


def find_urls(text: str) -> list[Span]:
    """Spans of links in `text`."""
    spans: list[Span] = []
    low = lower_keeping_offsets(text)
    if "://" in low:
        for m in _SCHEME_RE.finditer(low):
            spans.append((m.start(), _trim(text, m.start(), m.end()), "url"))
    if _BARE_HINT_RE.search(low):
        for m in _BARE_RE.finditer(low):
            if _accept_bare(m, text):
                end = _trim(text, m.start(), m.end()) if m.group("path") else m.end()
                spans.append((m.start(), end, "url"))
    if "dot" in low or " . " in low:
        spans.extend(_spoken(low))
    return spans


def _accept_bare(m: re.Match[str], text: str) -> bool:
    domain = m.group("domain")
    tld = m.group("tld")
    tld_text = text[m.start("tld") : m.end("tld")]
    labels = domain.split(".")
    if labels[0] == "www" or _known_link(labels):
        return True
    if tld in AMBIGUOUS_TLDS:
        return bool(m.group("path")) or labels[-2] in SECOND_LEVEL
    if tld in WORD_TLDS:
        return bool(m.group("path")) or labels[-2] in SECOND_LEVEL or _unlike_a_word(labels[-2])
    if tld not in URL_TLDS:
        return False
    # "late.Next" / "arrived.It": a capitalised word after a full stop is a new sentence.
    return not (tld_text[0].isupper() and not tld_text.isupper())


def _unlike_a_word(label: str) -> bool:
    return not label.isalpha()


def _known_link(labels: list[str]) -> bool:
    """Is the domain, or a parent of it, a known short / messenger / payment link host?"""
    return any(".".join(labels[i:]) in KNOWN_LINK_DOMAINS for i in range(len(labels) - 1))


def _spoken(low: str) -> list[Span]:
    spans: list[Span] = []
    pos = 0
    while (m := _SPOKEN_RE.search(low, pos)) is not None:
        labels = _SPOKEN_SPLIT_RE.split(m.group())
        ends = _label_ends(m)
        for n in range(len(labels), 1, -1):
            if _believable_spoken(labels[:n]):
                spans.append((m.start(), ends[n - 1], "url"))
                pos = ends[n - 1]
                break
        else:
            pos = m.start() + 1
    return spans


def _label_ends(m: re.Match[str]) -> list[int]:
    ends = [sep.start() + m.start() for sep in _SPOKEN_SPLIT_RE.finditer(m.group())]
    ends.append(m.end())
    return ends


def _believable_spoken(labels: list[str]) -> bool:
    first, tld = labels[0], labels[-1]
    if first in _NOT_A_SITE:
        return False
    if tld in AMBIGUOUS_TLDS:
        return labels[-2] in SECOND_LEVEL
    return tld in SPOKEN_TLDS


def _trim(text: str, start: int, end: int) -> int:
    """Drop sentence punctuation after a link, keeping a ")" that closes one inside it."""
    while end > start and text[end - 1] in _TRAILING_PUNCTUATION:
        if text[end - 1] == ")" and text.count("(", start, end) >= text.count(")", start, end):
            break
        end -= 1
    return end
