"""Small text helpers shared by the detectors."""

from __future__ import annotations


def words_of(text: str) -> frozenset[str]:
    """The whitespace-separated words of `text`: keeps long vocabularies readable in source."""
    return frozenset(text.split())


def lower_keeping_offsets(text: str) -> str:
    """`text.lower()` with the same length as `text`, so offsets found in it are offsets in `text`.

    Detectors match lowercased text with case-sensitive patterns (re.IGNORECASE costs 2-4x on
    these patterns). A handful of characters lowercase to two ("İ" -> "i̇"); those are kept as
    they are, which only means they do not match.
    """
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
