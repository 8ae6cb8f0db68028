"""Helpers for the word lists written inline in the detector modules."""

from __future__ import annotations


def words_of(text: str) -> frozenset[str]:
    """The whitespace-separated words of `text`: keeps long vocabularies readable in source."""
    return frozenset(text.split())
