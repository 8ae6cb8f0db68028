"""Search text rules: normalization, words with their offsets, stems, queries and matching.

Pure (no keys, no database): the same rules turn a message into index terms and a query into
the terms it needs, and verify a candidate in memory, so what the index finds and what the
caller is shown never disagree. Conversations have no language field, so every conversation
is stemmed as English (`LANGUAGE`); a per-conversation language would pass its own name here.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from domain.errors import Invalid

LANGUAGE = "english"
MAX_QUERY_CHARS = 200
MAX_QUERY_TERMS = 8
MIN_PREFIX = 3
# Prefixes indexed per word; a longer query prefix uses the longest of these that fits and
# is verified in memory. One length keeps the index small and its writes cheap (a 5-character
# prefix too cost a third more tokens): docs/search.md.
PREFIX_LENGTHS = (3,)

# Letters and digits (not "_"), plus combining marks, so "nai\u0308ve" stays one word.
_WORD = re.compile(
    r"(?:[^\W_]|[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f])+"
)
_PIECE = re.compile(r"[^\W_]+")
_QUERY_PART = re.compile(r'"([^"]*)"?|(\S+)')

# The commonest English function words are not indexed: they would be most of the rows and
# find nearly every message. A query may still use them (checked in memory, e.g. in phrases).
STOPWORDS = frozenset(
    {
        *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has"),
        *("have", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so"),
        *("that", "the", "their", "them", "they", "this", "to", "was", "we", "were", "will"),
        *("with", "you", "your"),
    }
)


def fold(word: str) -> str:
    """NFKC, casefold, and accents folded (combining marks dropped after NFKD)."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", word).casefold())
    return "".join(c for c in text if not unicodedata.combining(c))


@dataclass(frozen=True)
class Word:
    start: int  # offsets into the text as given
    end: int
    folded: str
    stem: str


_local = threading.local()


@lru_cache(maxsize=65536)
def stem(folded: str) -> str:
    """The word's stem (snowball stemmers keep state: one per thread). `snowballstemmer` hands
    the work to PyStemmer's C build of the same stemmers when it is installed (it is, in
    requirements.txt): the same stems, about 18 times faster."""
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = snowballstemmer.stemmer(LANGUAGE)
    result: str = stemmer.stemWord(folded)
    return result


def words(text: str) -> list[Word]:
    """Every word of `text`, in order, with its offsets. Folding may split a word in pieces
    (NFKC turns some characters into several): each piece keeps the word's offsets."""
    out: list[Word] = []
    for m in _WORD.finditer(text):
        for piece, stemmed in _pieces(m.group()):
            out.append(Word(m.start(), m.end(), piece, stemmed))
    return out


@lru_cache(maxsize=65536)
def _pieces(word: str) -> tuple[tuple[str, str], ...]:
    """(folded, stem) of each piece of one word as written: chat repeats its words, so the
    index stage and the in-memory check fold and stem each of them once."""
    return tuple((piece, stem(piece)) for piece in _PIECE.findall(fold(word)))


def index_terms(text: str) -> set[tuple[str, str]]:
    """What the index stores for `text` (before hashing): ("t", stem) for each word that is
    not a stopword, and ("p", prefix) for its indexed prefix lengths."""
    return set().union(*map(_word_terms, _WORD.findall(text)))


@lru_cache(maxsize=65536)
def _word_terms(word: str) -> tuple[tuple[str, str], ...]:
    """index_terms of one word as written, once per word (the index stage's hot path)."""
    terms: list[tuple[str, str]] = []
    for folded, stemmed in _pieces(word):
        if folded in STOPWORDS:
            continue
        terms.append(("t", stemmed))
        terms.extend(("p", folded[:n]) for n in PREFIX_LENGTHS if len(folded) >= n)
    return tuple(terms)


_STOP_STEMS = frozenset(stem(w) for w in STOPWORDS)


@dataclass(frozen=True)
class Query:
    terms: tuple[str, ...]  # stems
    prefixes: tuple[str, ...]  # folded prefixes, MIN_PREFIX characters or more
    phrases: tuple[tuple[str, ...], ...]  # stems in order, two or more

    def needs(self) -> set[tuple[str, str]]:
        """The index terms every match must hold (stopwords are not indexed)."""
        out: set[tuple[str, str]] = set()
        for s in (*self.terms, *(s for p in self.phrases for s in p)):
            if s not in _STOP_STEMS:
                out.add(("t", s))
        for p in self.prefixes:
            n = max(n for n in PREFIX_LENGTHS if n <= len(p))
            out.add(("p", p[:n]))
        return out


def parse(q: str) -> Query:
    """A query: words (all must match), `word*` prefixes, `"quoted phrases"`. 422 when empty,
    longer than MAX_QUERY_CHARS, with more than MAX_QUERY_TERMS words, or nothing to look up."""
    if len(q) > MAX_QUERY_CHARS:
        raise Invalid(
            f"the query is longer than {MAX_QUERY_CHARS} characters",
            {"q": [f"at most {MAX_QUERY_CHARS} characters"]},
        )
    terms: list[str] = []
    prefixes: list[str] = []
    phrases: list[tuple[str, ...]] = []
    count = 0
    for m in _QUERY_PART.finditer(q):
        phrase, bare = m.group(1), m.group(2)
        if phrase is not None:
            stems = tuple(w.stem for w in words(phrase))
            count += len(stems)
            if len(stems) == 1:
                terms.append(stems[0])
            elif stems:
                phrases.append(stems)
            continue
        star = bare.endswith("*")
        found = words(bare)
        count += len(found)
        if star and found:
            last = found.pop()
            if len(last.folded) < MIN_PREFIX:
                raise Invalid(
                    f"a prefix search needs at least {MIN_PREFIX} characters before the *",
                    {"q": [f"prefixes of {MIN_PREFIX} characters or more"]},
                )
            prefixes.append(last.folded)
        terms.extend(w.stem for w in found)
    if count > MAX_QUERY_TERMS:
        raise Invalid(
            f"the query has more than {MAX_QUERY_TERMS} words",
            {"q": [f"at most {MAX_QUERY_TERMS} words"]},
        )
    query = Query(tuple(dict.fromkeys(terms)), tuple(dict.fromkeys(prefixes)), tuple(phrases))
    if not query.needs():
        raise Invalid(
            "the query has no word to search for (common words such as 'the' are not indexed)",
            {"q": ["needs a word, a prefix* or a phrase"]},
        )
    return query


def match(query: Query, text: str) -> list[list[int]] | None:
    """Where `query` matches `text` ([start, end] offsets, merged), or None when some part of
    it does not: the in-memory check of every candidate the index returns."""
    ws = words(text)
    spans: list[tuple[int, int]] = []
    for t in query.terms:
        found = [(w.start, w.end) for w in ws if w.stem == t]
        if not found:
            return None
        spans += found
    for p in query.prefixes:
        found = [(w.start, w.end) for w in ws if w.folded.startswith(p)]
        if not found:
            return None
        spans += found
    stems = [w.stem for w in ws]
    for phrase in query.phrases:
        n = len(phrase)
        found = [
            (ws[i].start, ws[i + n - 1].end)
            for i in range(len(ws) - n + 1)
            if tuple(stems[i : i + n]) == phrase
        ]
        if not found:
            return None
        spans += found
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
