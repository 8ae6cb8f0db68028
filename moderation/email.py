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
from moderation.text import lower_keeping_offsets, words_of
from moderation.verdict import Span

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
    rf"(?<![\w.+@-])(?P<local>{_W}(?:{_LOCAL_SEP}{_W}){{0,8}})"
    rf"(?P<at>{_BRACKET_AT}|{_SYMBOL_AT}|{_SPOKEN_AT})"
    rf"(?P<domain>{_W}(?:{_DOT}{_W}){{0,6}})",
)
_DOMAIN_PART_RE = re.compile(rf"(?P<sep>{_DOT})?(?P<label>{_W})")
# A spelled " at " is only worth the full address pattern when a word and a dot (or a mail
# provider) follow it: "meet at the cafe" stops here, "john at gmail dot com" does not.
_SPELLED_AT_HINT_RE = re.compile(
    rf"\bat\b{_CLOSE}?\s*(?:{_W}{_DOT}{_W}|(?:{'|'.join(sorted(MAIL_PROVIDERS))})\b)"
)
# "my gmail is priyas1990": a provider named next to a handle that is not an ordinary word.
_HANDLE_PROVIDERS = "gmail|yahoo|hotmail|outlook|icloud"
_HANDLE_HINT_RE = re.compile(_HANDLE_PROVIDERS)
_HANDLE_RE = re.compile(
    rf"\b(?:{_HANDLE_PROVIDERS})(?:\s+(?:id|address|account))?\s{{0,2}}"
    r"(?:is|:|-|=)?\s{0,2}(?P<handle>[a-z0-9][a-z0-9._]{2,}[a-z0-9])\b",
)
# Letters typed one at a time: "j o h n @ g m a i l . c o m".
_SPACED_RE = re.compile(r"(?<!\S)\S(?: \S){5,80}(?!\S)")
_PLAIN_ADDRESS_RE = re.compile(r"[\w.+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}")
_PLAIN_WORD_RE = re.compile(r"[a-z]+")
# File-like endings that follow an "@" in names such as "icon@2x.png".
_FILE_EXTENSIONS = words_of("png jpg jpeg gif svg webp pdf txt doc docx csv zip")


def find_emails(text: str) -> list[Span]:
    """Spans of e-mail addresses in `text`."""
    spans: list[Span] = []
    low = lower_keeping_offsets(text)
    symbol = "@" in low
    if symbol or _SPELLED_AT_HINT_RE.search(low):
        spans.extend(_addresses(low))
    if symbol:
        spans.extend(_spaced(low))
    if _HANDLE_HINT_RE.search(low):
        spans.extend(_handles(low))
    return spans


def _addresses(low: str) -> list[Span]:
    spans: list[Span] = []
    pos = 0
    while (m := _ADDRESS_RE.search(low, pos)) is not None:
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
    spoken_at = at.strip() == "at"
    spaced_at = at != at.strip()
    local = m.group("local")
    parts = list(_DOMAIN_PART_RE.finditer(m.group("domain")))
    labels = [p.group("label") for p in parts]
    seps = [(p.group("sep") or "").strip() for p in parts]
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


def _handles(low: str) -> list[Span]:
    spans: list[Span] = []
    for m in _HANDLE_RE.finditer(low):
        handle = m.group("handle")
        if any(c in handle for c in "._0123456789"):
            spans.append((m.start("handle"), m.end("handle"), "email"))
    return spans


def _spaced(low: str) -> list[Span]:
    spans: list[Span] = []
    for m in _SPACED_RE.finditer(low):
        if "@" in m.group() and _PLAIN_ADDRESS_RE.fullmatch(m.group().replace(" ", "")):
            spans.append((m.start(), m.end(), "email"))
    return spans
