"""`moderate()`: run the detectors over a text and apply a policy to what they found."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from moderation.email import find_emails
from moderation.phone import DEFAULT_PHONE_REGIONS, find_phones
from moderation.policy import Policy
from moderation.profanity import Lexicon, default_lexicon, find_profanity
from moderation.url import find_urls
from moderation.verdict import Span, Verdict, build_verdict

logger = logging.getLogger(__name__)

FAILED_REASON = "automatic moderation failed; held for review"


def detect(
    text: str,
    *,
    lexicon: Lexicon | None = None,
    phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
) -> list[Span]:
    """Every finding in `text` as sorted (start, end, label) spans, before any policy.

    Each piece of contact detail carries one label: the domain of an address is not also a link
    ("john@gmail.com"), an address inside a link is part of the link ("site.com/?to=a@b.com"),
    and a number inside a link or an address is part of it ("wa.me/9779841234567").
    """
    emails = find_emails(text)
    urls = [s for s in find_urls(text) if not _inside(s, emails)]
    emails = [s for s in emails if not _inside(s, urls)]
    phones = [s for s in find_phones(text, phone_regions) if not _overlaps(s, urls + emails)]
    found = find_profanity(text, lexicon or default_lexicon())
    return sorted({*found, *emails, *urls, *phones})


def moderate(
    text: str,
    policy: Policy,
    *,
    extra_words: Iterable[str] = (),
    allow_words: Iterable[str] = (),
    lexicon: Lexicon | None = None,
    phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
) -> Verdict:
    """Moderate `text` under `policy`.

    `extra_words` / `allow_words` adjust the profanity list for this call (the adjusted lexicon
    is cached, so passing the same words every time is cheap); `lexicon` replaces it entirely.
    Never raises for a str: if a detector fails on some input nobody foresaw, the message is held
    for a human instead of being let through unchecked or crashing the pipeline.
    """
    try:
        words = lexicon or default_lexicon()
        if extra_words or allow_words:
            words = words.extended(extra_words, allow_words)
        spans = detect(text, lexicon=words, phone_regions=phone_regions)
        return build_verdict(text, spans, policy)
    except Exception:
        logger.exception("moderation failed", extra={"text_length": len(text)})
        return Verdict(action="hold", masked=text, reason=FAILED_REASON)


def _inside(span: Span, others: list[Span]) -> bool:
    start, end, _ = span
    return any(o_start <= start and end <= o_end for o_start, o_end, _ in others)


def _overlaps(span: Span, others: list[Span]) -> bool:
    start, end, _ = span
    return any(start < o_end and o_start < end for o_start, o_end, _ in others)
