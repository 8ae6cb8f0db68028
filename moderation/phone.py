"""Phone number spans: formatted, spaced-out, dotted and spelled-out numbers.

Two stages. First we blank out what only looks like a phone number (times, dates, prices, order
and booking ids, ZIP+4, ranges) in a same-length working copy, so offsets stay valid. Then we
collect runs of digits joined by the separators people use when they type a number (space, dot,
dash, slash, parentheses) and ask `phonenumbers` whether the digits are a possible number in one
of the configured regions. `PhoneNumberMatcher` over the whole text per region costs ~20 us a
region and does not see "5 5 5 1 2 3 4 5 6 7", so it is only used to split over-long runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache

import phonenumbers
from phonenumbers import Leniency, NumberParseException, PhoneMetadata, PhoneNumberMatcher

from moderation.text import lower_keeping_offsets
from moderation.verdict import Span

logger = logging.getLogger(__name__)

# Regions whose national formats are tried for numbers written without a country code. Order
# matters only for speed: the first region that accepts a number ends the search.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "IN", "NP", "DE")
MIN_DIGITS = 7
MAX_DIGITS = 15  # E.164

_DIGIT_RE = re.compile(r"\d")
_BLANK = "_"

# Things that start with a digit and carry digits but are not phone numbers; blanked as a whole.
# `(?=\d)` first lets the regex engine skip to digits instead of trying every alternative at
# every position.
_DIGIT_LED_NOISE = [
    # times: 10:30, 10:30:00, 9.45pm
    r"\d{1,2}:\d{2}(?::\d{2})?(?:\s?[ap]\.?m\b\.?)?",
    r"\d{1,2}[.]\d{2}\s?[ap]\.?m\b\.?",
    # dates: 2025-10-06, 06/10/2025, 12.11.2025, 10/6/25 (day and month range-checked)
    # ... but not the start of a longer dotted or dashed run: 9.8.41.2.3.4.5 is a number
    r"(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?![-/.]?\d)",
    r"(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|1[0-2])[-/.](?:19|20)?\d{2}(?![-/.]?\d)",
    r"(?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:19|20)?\d{2}(?![-/.]?\d)",
    # year ranges: 2019-2023
    r"(?:19|20)\d{2}\s?[-\u2013/]\s?(?:19|20)\d{2}(?!\d)",
    # amounts with the currency after, or "/-" as written in South Asia: 15000/-, 2500000 rupees
    r"\d[\d,.]{0,24}\s?(?:/-|(?:usd|eur|gbp|inr|npr|rs|rupees?|dollars?|euros?|pounds?|lakhs?"
    r"|crores?|k)\b)",
    # round ranges: 1000-2000, 1500 to 2500
    r"\d{1,6}00\s?(?:[-\u2013]|to)\s?\d{1,6}00\b",
    # payment card numbers: 4111 1111 1111 1111
    r"\d{4}(?P<card_sep>[ -]?)\d{4}(?P=card_sep)\d{4}(?P=card_sep)\d{4}\b",
    # ZIP+4
    r"\d{5}-\d{4}\b",
]
_NOISE_RE = re.compile(
    r"(?=\d)(?<!\w)(?:" + "|".join(_DIGIT_LED_NOISE) + ")"
    # amounts with the currency first: $1,250.00, Rs. 15000, NPR 2,50,000
    r"|(?:[$€£₹¥]|\b(?:rs|inr|npr|nrs|usd|us\$|eur|gbp|aud|cad)\b\.?)\s?\d[\d,.]{0,24}"
)
# Words that label a phone number when glued to it: "tel-9841234567", "cell#9841234567".
_PHONE_LABELS = "tel|ph|phone|mob|mobile|cell|call|no|num|wa|whatsapp|viber|contact"
# What may precede a digit run that makes it an id rather than a number: a word that names an
# id ("order number 40239981", "awb 7784 5521 0093"), or letters glued on ("BK-2024-00917",
# "INV-778812", "#4412"). Runs cannot start right after a letter at all ("A12345", "TXN88321").
_ID_BEFORE_RE = re.compile(
    r"(?:\b(?:order|booking|ref|reference|invoice|inv|ticket|tracking|awb|pnr|confirmation|conf"
    r"|receipt|transaction|txn|utr|account|acct|a/c|iban|policy|sku|item|listing|case|claim"
    r"|isbn|serial|model|pin|otp|code|voucher|coupon|member|membership|customer|reservation"
    r"|parcel|shipment|consignment)(?:\s?(?:no\.?|number|num|id|#|:|-|is))*\s?"
    rf"|(?<![a-z])(?!(?:{_PHONE_LABELS})[-_/#]$)[a-z]+[-_/#]"
    r"|(?<![a-z])#\s?)$"
)
_ID_CONTEXT = 40  # characters before a run searched for an id keyword
_LONGEST_RUN = 64  # characters; longer runs are split by PhoneNumberMatcher only up to this

# A run of digit groups joined by what people put inside phone numbers, including the two
# invisible characters that turn a digit into a keycap emoji ("9\ufe0f\u20e3").
_GROUP = r"(?:\(\s?\d+\s?\)|\d)"
_RUN_RE = re.compile(
    rf"(?<![\w+])(?:\+\s?)?{_GROUP}(?:[ .\-/\ufe0f\u20e3]{{1,3}}{_GROUP}|{_GROUP})*"
)

# Spoken digits. A tens word stands for two digits and absorbs a unit after it ("twenty three"
# is 23); teens are two digits; "double"/"triple" repeat the next digit.
_UNITS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen")  # fmt: skip
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_REPEATS = {"double": 2, "triple": 3}
_SPOKEN = sorted([*_UNITS, *_TEENS, *_TENS, *_REPEATS], key=len, reverse=True)  # longest first
_WORD = rf"(?:{'|'.join(_SPOKEN)}|\d)"
_SPELLED_RUN_RE = re.compile(rf"(?<![a-z]){_WORD}(?:[\s,.\-/]{{0,3}}{_WORD})*(?![a-z])")
_SPELLED_TOKEN_RE = re.compile(_WORD)
# Finds number words also inside others ("one" in "phone"): an upper bound, to decide whether
# to look closer.
_NUMBER_WORD_RE = re.compile("|".join(_SPOKEN))
_TWO_DIGIT_WORDS = frozenset((*_TEENS, *_TENS))


def find_phones(text: str, regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> list[Span]:
    """Spans of phone numbers in `text`."""
    digits = len(_DIGIT_RE.findall(text))
    numeric = digits >= MIN_DIGITS and any(
        len(_DIGIT_RE.findall(m.group())) >= MIN_DIGITS for m in _RUN_RE.finditer(text)
    )
    low = lower_keeping_offsets(text)
    words = sum(2 if w in _TWO_DIGIT_WORDS else 1 for w in _NUMBER_WORD_RE.findall(low))
    spelled = words > 0 and words + digits >= MIN_DIGITS
    if not numeric and not spelled:
        return []
    # Only now is the blanking worth it: most texts never get here.
    work = _NOISE_RE.sub(_blank, low)
    spans: list[Span] = []
    if numeric:
        for m in _RUN_RE.finditer(work):
            if _ID_BEFORE_RE.search(low, max(0, m.start() - _ID_CONTEXT), m.start()) is None:
                spans.extend(_numeric_run(text, m.start(), m.end(), regions))
    if spelled:
        spans.extend(_spelled_runs(work))
    return spans


def _blank(m: re.Match[str]) -> str:
    return _BLANK * (m.end() - m.start())


def _numeric_run(text: str, start: int, end: int, regions: Sequence[str]) -> list[Span]:
    start, end = _trim_parentheses(text, start, end)
    run = text[start:end]
    digits = "".join(c for c in run if c.isdigit())
    if len(digits) < MIN_DIGITS:
        return []
    if len(digits) > MAX_DIGITS:
        return _split_long_run(text, start, end, regions)
    plus = run.startswith("+")
    # A bare round number is an amount someone forgot the currency of ("budget 2500000").
    if not plus and digits == run and len(digits) <= 9 and digits.endswith("000"):
        return []
    if _is_possible_number(("+" if plus else "") + digits, plus, regions):
        return [(start, end, "phone")]
    return []


def _trim_parentheses(text: str, start: int, end: int) -> tuple[int, int]:
    run = text[start:end]
    if run.startswith("(") and ")" not in run:
        start += 1
    elif run.endswith(")") and run.count("(") < run.count(")"):
        end -= 1
    return start, end


def _is_possible_number(number: str, international: bool, regions: Sequence[str]) -> bool:
    """phonenumbers' POSSIBLE leniency: the length fits the numbering plan.

    For national numbers this is a length check against the regions' metadata, precomputed once;
    a full `phonenumbers.parse` costs ~13 us and says the same thing for them. Numbers with a
    country code are parsed, because the code decides which plan applies.
    """
    if not international and len(number) in _national_lengths(tuple(regions)):
        return True
    for region in (None,) if international else regions:
        try:
            if phonenumbers.is_possible_number(phonenumbers.parse(number, region)):
                return True
        except NumberParseException:
            continue
        except Exception:  # a library bug must not take the pipeline down
            logger.warning("phonenumbers failed on a candidate number", exc_info=True)
    return False


@lru_cache(maxsize=16)
def _national_lengths(regions: tuple[str, ...]) -> frozenset[int]:
    """Digit counts that are a possible national number in one of `regions`, with or without
    the national prefix (GB "07700 900123" is 10 digits after its leading 0)."""
    lengths: set[int] = set()
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region(region.upper())
        if metadata is None or metadata.general_desc is None:
            continue
        desc = metadata.general_desc
        plan = {*(desc.possible_length or ()), *(desc.possible_length_local_only or ())}
        prefix = len(metadata.national_prefix or "")
        lengths.update(plan)
        lengths.update(n + prefix for n in plan)
    return frozenset(n for n in lengths if MIN_DIGITS <= n <= MAX_DIGITS)


def _split_long_run(text: str, start: int, end: int, regions: Sequence[str]) -> list[Span]:
    """Several numbers in one run ("9841234567/9851234567"): split on "/" first, then ask
    PhoneNumberMatcher, which knows national groupings."""
    run = text[start:end]
    if len(run) > _LONGEST_RUN:
        return []  # a wall of digits (a table, a serial dump) is not someone sharing a number
    if "/" in run:
        spans: list[Span] = []
        offset = start
        for piece in run.split("/"):
            spans.extend(_numeric_run(text, offset, offset + len(piece), regions))
            offset += len(piece) + 1
        if spans:
            return spans
    found: set[Span] = set()
    for region in regions:
        try:
            for match in PhoneNumberMatcher(run, region, leniency=Leniency.POSSIBLE):
                found.add((start + match.start, start + match.end, "phone"))
        except Exception:  # a library bug must not take the pipeline down
            logger.warning("phonenumbers failed on a long digit run", exc_info=True)
    return sorted(found)


def _spelled_runs(work: str) -> list[Span]:
    """Numbers spelled out, fully or mixed with digits: "five five five 1 2 3 4", "98four1...",
    "9841 twenty three forty five sixty seven"."""
    spans: list[Span] = []
    for m in _SPELLED_RUN_RE.finditer(work):
        count = words = 0
        repeat = 1
        after_tens = False
        for token in _SPELLED_TOKEN_RE.findall(m.group()):
            if token in _REPEATS:
                repeat = _REPEATS[token]
                continue
            if not token.isdigit():
                words += 1
            if after_tens and token in _UNITS and token not in ("zero", "oh"):
                after_tens = False  # the 3 of "twenty three"
                continue
            count += 2 if token in _TWO_DIGIT_WORDS else repeat
            after_tens = token in _TENS
            repeat = 1
        if words and count >= MIN_DIGITS:
            spans.append((m.start(), m.end(), "phone"))
    return spans
