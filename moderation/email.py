"""E-mail address spans, plain and the obfuscated ways people write them to slip past filters.

"john@gmail.com", "john @ gmail . com", "john[at]gmail[dot]com", "john (at) gmail (dot) com",
"john dot doe at gmail dot com", "raj at gmail", "j o h n @ g m a i l . c o m", "my gmail is
priyas1990". A bare " at " is everyday English ("meet at the cafe", "look at it dot by dot"), so
that form needs more evidence before it counts; see `_accept`.
"""

from __future__ import annotations

import re

from moderation.domains import (
    AMBIGUOUS_TLDS,
    MAIL_PROVIDERS,
    SECOND_LEVEL,
    SPOKEN_TLDS,
    URL_TLDS,
)
from moderation.verdict import Span
from moderation.wordsets import words_of

_W = r"[a-z0-9](?:[a-z0-9_+-]*[a-z0-9])?"
_OPEN, _CLOSE = r"[\[\(\{<]", r"[\]\)\}>]"
_BRACKET_AT = rf"\s?{_OPEN}\s?(?:at|@)\s?{_CLOSE}\s?"
_SYMBOL_AT = r"\s{0,2}@\s{0,2}"
_SPOKEN_AT = r"\s+at\s+"
_BRACKET_DOT = rf"\s?{_OPEN}\s?(?:dot|\.)\s?{_CLOSE}\s?"
_SPOKEN_DOT = r"\s+dot\s+"
_PLAIN_DOT = r"\s{0,2}\.\s{0,2}"
_DOT = rf"(?:{_BRACKET_DOT}|{_SPOKEN_DOT}|{_PLAIN_DOT})"
_LOCAL_SEP = rf"(?:\.|{_BRACKET_DOT}|{_SPOKEN_DOT}|\s+underscore\s+)"

_ADDRESS_RE = re.compile(
    rf"(?<![\w.+@-])(?P<local>{_W}(?:{_LOCAL_SEP}{_W})*)"
    rf"(?P<at>{_BRACKET_AT}|{_SYMBOL_AT}|{_SPOKEN_AT})"
    rf"(?P<domain>{_W}(?:{_DOT}{_W})*)",
    re.IGNORECASE,
)
_DOMAIN_PART_RE = re.compile(rf"(?P<sep>{_DOT})?(?P<label>{_W})", re.IGNORECASE)
# Only worth running the address pattern when both halves of an address could be present.
_AT_HINT_RE = re.compile(r"@|\bat\b", re.IGNORECASE)
_DOMAIN_HINT_RE = re.compile(
    r"\w\s{0,2}\.\s{0,2}[a-z]|\bdot\b|" + _OPEN + r"\s?\.|" + "|".join(sorted(MAIL_PROVIDERS)),
    re.IGNORECASE,
)
# "my gmail is priyas1990": a provider named next to a handle that is not an ordinary word.
_HANDLE_RE = re.compile(
    r"\b(?:gmail|yahoo|hotmail|outlook|icloud)(?:\s+(?:id|address|account))?\s{0,2}"
    r"(?:is|:|-|=)?\s{0,2}(?P<handle>[a-z0-9][a-z0-9._]{2,}[a-z0-9])\b",
    re.IGNORECASE,
)
# Letters typed one at a time: "j o h n @ g m a i l . c o m".
_SPACED_RE = re.compile(r"(?<!\S)\S(?: \S){5,}(?!\S)")
_PLAIN_ADDRESS_RE = re.compile(r"[\w.+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}", re.IGNORECASE)
_PLAIN_WORD_RE = re.compile(r"[a-z]+")
# File-like endings that follow an "@" in names such as "icon@2x.png".
_FILE_EXTENSIONS = words_of("png jpg jpeg gif svg webp pdf txt doc docx csv zip")


def find_emails(text: str) -> list[Span]:
    """Spans of e-mail addresses in `text`."""
    if _AT_HINT_RE.search(text) is None:
        return _handles(text) if "mail" in text.lower() else []
    spans: list[Span] = []
    if _DOMAIN_HINT_RE.search(text):
        spans.extend(_addresses(text))
    spans.extend(_handles(text))
    if "@" in text:
        spans.extend(_spaced(text))
    return spans


def _addresses(text: str) -> list[Span]:
    spans: list[Span] = []
    pos = 0
    while (m := _ADDRESS_RE.search(text, pos)) is not None:
        end = _accept(m)
        if end is None:
            pos = m.start() + 1  # a later, shorter candidate may start inside this one
            continue
        spans.append((m.start(), end, "email"))
        pos = end
    return spans


def _accept(m: re.Match[str]) -> int | None:
    """End offset of the address in match `m`, or None if it is not one.

    The domain may have run on into the next sentence ("john@gmail.com. Thanks"), so the longest
    prefix of its labels that forms a believable domain is taken.
    """
    at = m.group("at")
    spoken_at = at.strip().lower() == "at"
    spaced_at = at != at.strip()
    local = m.group("local").lower()
    parts = list(_DOMAIN_PART_RE.finditer(m.group("domain")))
    labels = [p.group("label").lower() for p in parts]
    seps = [(p.group("sep") or "").strip().lower() for p in parts]
    provider = labels[0]
    if spoken_at and not _looks_like_address(local, provider, seps):
        return None
    for n in range(len(labels), 0, -1):
        if any(_is_sentence_break(p.group("sep"), spoken_at) for p in parts[1:n]):
            continue
        if _believable_domain(labels[:n], seps[:n], spoken_at, spaced_at):
            return m.start("domain") + parts[n - 1].end()
    return None


def _looks_like_address(local: str, provider: str, seps: list[str]) -> bool:
    """With a bare " at ", ask for a sign that someone is writing an address on purpose."""
    if provider in MAIL_PROVIDERS:
        return True
    if any(s and s != "." for s in seps):  # "dot" or "[.]" spelled out in the domain
        return True
    # "john.doe", "raj_k", "priya90", "john dot doe": not a word that happens to precede "at"
    return _PLAIN_WORD_RE.fullmatch(local) is None


def _is_sentence_break(sep: str | None, spoken_at: bool) -> bool:
    """ ". " after a word ends a sentence ("john@gmail.com. Thanks"), it is not a dot.

    " . " with spaces on both sides is an obfuscated dot after "@" ("john @ gmail . com"), but
    not after a plain " at " ("I'm at home . It's raining").
    """
    if sep is None or sep.strip() != "." or sep == sep.rstrip():
        return False
    return spoken_at or sep == sep.lstrip()


def _believable_domain(
    labels: list[str], seps: list[str], spoken_at: bool, spaced_at: bool
) -> bool:
    if len(labels) == 1:
        return labels[0] in MAIL_PROVIDERS
    tld = labels[-1]
    if not tld.isalpha() or tld in _FILE_EXTENSIONS:
        return False
    if tld in AMBIGUOUS_TLDS:
        return labels[-2] in SECOND_LEVEL or labels[0] in MAIL_PROVIDERS
    if not spoken_at:
        # "insta @himalaya.treks" is a mention; "john @ gmail . com" still needs a known TLD.
        return len(tld) >= 2 and (not spaced_at or tld in URL_TLDS or labels[0] in MAIL_PROVIDERS)
    spelled = any(s and s != "." for s in seps)
    return tld in (SPOKEN_TLDS if spelled else URL_TLDS) or labels[0] in MAIL_PROVIDERS


def _handles(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _HANDLE_RE.finditer(text):
        handle = m.group("handle")
        if any(c in handle for c in "._0123456789"):
            spans.append((m.start("handle"), m.end("handle"), "email"))
    return spans


def _spaced(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _SPACED_RE.finditer(text):
        if "@" in m.group() and _PLAIN_ADDRESS_RE.fullmatch(m.group().replace(" ", "")):
            spans.append((m.start(), m.end(), "email"))
    return spans
