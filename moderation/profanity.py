"""Profanity spans from better-profanity's word list, matched per whole token.

better-profanity only answers "does this string contain a bad word" or censors the whole
string, and it is slow (it compares every token against ~900 variant objects). We keep its
curated list but match it ourselves: one regex pass for tokens, set lookups, and a small normaliser
for the obfuscations people actually type (leetspeak, starred letters, stretched letters, spaced
letters). Matching whole tokens only is what keeps Scunthorpe, assess and cocktail clean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

from better_profanity.utils import get_complete_path_of_file, read_wordlist

from moderation.text import lower_keeping_offsets, words_of
from moderation.verdict import Span

# Words of better-profanity's list that are ordinary vocabulary in marketplace and booking chat
# (furniture, food, travel, health, identity). Flagging them masks honest messages ("the door
# knob is loose", "chicken breasts", "ski slope", "sexual harassment report") and teaches users
# that the filter is noise. Reasoning per group in docs/moderation.md.
DEFAULT_ALLOWED_WORDS: frozenset[str] = words_of(
    """
    god omg lmao lmfao xx xxx len arian aryan asanchez gai gae gey yury wang paddy pollock massa
    kill murder sniper napalm uzi drunk stoned fat ugly stupid dummy dopey trashy
    pot potty weed hemp hookah vodka rum heroin opium opiate peyote valium snuff souse soused
    strip stroke screw screwed screwing erect thrust hump flange lube knob wad whiz pawn revue
    sandbar seaman seamen slope tramp maxi nude naked virgin facial fingering enlargement
    penetrate penetration oral orally organ breasts nipple nipples loin loins rump teat wedgie
    hoar homey muff nappy dong undies pantie panties panty pastie pasty willies willy woody
    tinkle pee vomit urine urinal menses menstruate menstruation uterus ovary ovum ovums womb
    hymen rectal rectum rectus anus testes testis teste testee testicle testical pms herp herpes
    hiv sex sexual gay gays lesbians queer transsexual seduce steamy racy prude quicky kinky
    vixen vulgar unwed slave suck sucked sucking shag niggle crotch puss punky tampon toots
    cowgirl cowgirls foobar hitler reich areole mams hooch junky shitzu shitake shiitake
    """
)

# Common chat spellings better-profanity's list lacks (its list has "fcuk" and "fuk", not "fck").
DEFAULT_EXTRA_WORDS: frozenset[str] = words_of(
    """
    fck fcking fckin fcked fking fkin fkn effing ffs omfg bollocks asshat a-hole dickwad scumbag
    bullcrap
    """
)

# Stems so strong that a token starting or ending with them is profane whatever is glued on
# ("shitshow", "clusterfuck"). Prefix/suffix only: "Scunthorpe" has "cunt" in the middle.
STRONG_STEMS: tuple[str, ...] = ("fuck", "shit", "cunt", "bitch")

# Leetspeak as typed: each symbol maps to the letter it usually stands for. One character to one
# character, so offsets in the normalised token are offsets in the original.
_LEET = str.maketrans("013457@$!|+8", "oieastasiitb")
_LEET_L = str.maketrans("1", "l")

# A token: letters/digits, symbols allowed inside (sh!t, f*ck, a$$), a leading @ or $ (@ss, $hit)
# and trailing $ * + (a$$, f**). Trailing "!" and "." stay out ("shit!!!" is the token "shit"),
# and apostrophes split ("bitch's" is "bitch" + "s"). Symbol runs are bounded so "@@@@..."
# cannot make the pattern backtrack quadratically.
_TOKEN_RE = re.compile(r"[@$]{0,3}[^\W_]+(?:[@$*!+|]{1,3}[^\W_]+)*[$*+]{0,3}")
# Shapes only the slow path recognises, not a plain token lookup: stretched letters ("fuuuck")
# and words spelled letter by letter ("f u c k", "s.h.i.t"; searched in " " + text + " ").
# Two small patterns are faster than one alternation of both.
_STRETCHED_RE = re.compile(r"([a-z])\1\1")
_SPACED_OUT_RE = re.compile(r"[^a-z][a-z][ ._-][a-z][ ._-][a-z][^a-z]")
_RUN3_RE = re.compile(r"(.)\1\1+")
_RUN2_RE = re.compile(r"(.)\1+")
_SPLIT_ENTRY_RE = re.compile(r"[\s._-]+")
_PHRASE_GAP_RE = re.compile(r"[\s_-]{1,3}")
_STRIP_LEAD = "*!+|"
_STRIP_TRAIL = "*!|"


@dataclass(frozen=True, eq=False)
class Lexicon:
    """The profane vocabulary, precomputed for per-token lookups.

    Build one with `Lexicon.build` (or use `default_lexicon()`); it is immutable and shared.
    """

    words: frozenset[str]
    # never profane, even glued to a strong stem ("shitzu", the dog breed as people spell it)
    allowed: frozenset[str]
    # what a run of single letters may spell ("f u c k", "s.o.b.")
    spelled: frozenset[str]
    # words plus their plural and possessive forms, for the one-call fast path
    surface: frozenset[str]
    # words with letter runs squeezed to one letter ("fuuuck" -> "fuck", "ass" -> "as")
    squeezed: frozenset[str]
    # multi-token entries ("bull shit", "son-of-a-bitch") with the index of their key token, by
    # key token: the part least likely in ordinary chat, so "2 nights" does not look for
    # "2 girls 1 cup" (see _phrase_key)
    phrases: Mapping[str, tuple[tuple[tuple[str, ...], int], ...]]
    # words by length, newline-joined, for matching starred tokens with one regex search
    by_length: Mapping[int, str]
    # length of the longest word, which bounds the letter-by-letter search
    longest: int
    # STRONG_STEMS that this lexicon lists, and one pattern finding any of them
    stems: tuple[str, ...]
    stems_re: re.Pattern[str] | None

    @classmethod
    def build(cls, words: Iterable[str], allowed: Iterable[str] = ()) -> Lexicon:
        """Precompute the lookups for `words` minus `allowed` (both case-insensitive)."""
        allow = {w.strip().lower() for w in allowed}
        singles: set[str] = set()
        spelled: set[str] = set()
        phrases: dict[str, set[tuple[tuple[str, ...], int]]] = {}
        for entry in words:
            entry = entry.strip().lower()
            if not entry or entry in allow:
                continue
            parts = tuple(p for p in _SPLIT_ENTRY_RE.split(entry) if p)
            if len(parts) == 1:
                singles.add(parts[0])
            elif all(len(p) == 1 for p in parts):
                spelled.add("".join(parts))  # "s.o.b.": only as spaced letters, "sob" is a word
            elif "".join(parts) not in allow:  # "cow girl" goes with "cowgirl"
                singles.add("".join(parts))  # "bullshit" glued is as bad as "bull shit"
                key = _phrase_key(parts, singles)
                phrases.setdefault(parts[key], set()).add((parts, key))
        singles -= allow
        spelled -= allow
        surface = set(singles)
        # plurals, and possessives, which tokenise as "bitch" + "s"
        surface.update(w + "s" for w in singles if not w.endswith("s"))  # not "asses" + "s"
        squeezed = {_RUN2_RE.sub(r"\1", w) for w in singles if w.isalpha()}
        by_length: dict[int, list[str]] = {}
        for w in singles:
            if w.isalpha():
                by_length.setdefault(len(w), []).append(w)
        stems = tuple(stem for stem in STRONG_STEMS if stem in singles)
        return cls(
            words=frozenset(singles),
            allowed=frozenset(allow),
            spelled=frozenset(spelled | singles),
            surface=frozenset(surface - allow),
            squeezed=frozenset(s for s in squeezed if len(s) >= 3),
            phrases=MappingProxyType(
                {k: tuple(sorted(v, key=lambda p: -len(p[0]))) for k, v in phrases.items()}
            ),
            by_length=MappingProxyType({n: "\n".join(sorted(ws)) for n, ws in by_length.items()}),
            longest=max(map(len, singles | spelled), default=0),
            stems=stems,
            stems_re=re.compile("|".join(stems)) if stems else None,
        )

    def extended(self, extra_words: Iterable[str] = (), allowed: Iterable[str] = ()) -> Lexicon:
        """A lexicon with `extra_words` added and `allowed` removed; cached per arguments."""
        extra = frozenset(w.strip().lower() for w in extra_words)
        return _extend(self, extra, frozenset(w.strip().lower() for w in allowed))


@lru_cache(maxsize=64)
def _extend(base: Lexicon, extra: frozenset[str], allowed: frozenset[str]) -> Lexicon:
    phrase_entries = (" ".join(p) for group in base.phrases.values() for p, _ in group)
    spelled = (".".join(w) for w in base.spelled - base.words)
    # An explicitly added word wins over the default allow-list ("hell" may be fine, "kill" not).
    return Lexicon.build(
        [*base.words, *phrase_entries, *spelled, *extra], (base.allowed - extra) | allowed
    )


def better_profanity_words() -> list[str]:
    """better-profanity's bundled word list, as shipped."""
    return list(read_wordlist(get_complete_path_of_file("profanity_wordlist.txt")))


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """better-profanity's list plus DEFAULT_EXTRA_WORDS minus DEFAULT_ALLOWED_WORDS, built once
    per process."""
    return Lexicon.build([*better_profanity_words(), *DEFAULT_EXTRA_WORDS], DEFAULT_ALLOWED_WORDS)


def find_profanity(text: str, lexicon: Lexicon) -> list[Span]:
    """Spans of profane tokens and phrases in `text`.

    Most messages are clean, so the common path is one regex pass for tokens and a few C-level
    set and substring checks; only a text with some evidence gets the per-token scan.
    """
    low = lower_keeping_offsets(text)
    tokens = _TOKEN_RE.findall(low)
    if not tokens:
        return []
    if _worth_scanning(low, tokens, lexicon):
        return _scan(low, lexicon)
    return []


def _worth_scanning(low: str, tokens: list[str], lexicon: Lexicon) -> bool:
    if not lexicon.surface.isdisjoint(tokens) or not lexicon.phrases.keys().isdisjoint(tokens):
        return True
    if lexicon.stems_re is not None and lexicon.stems_re.search(low):
        return True
    if _STRETCHED_RE.search(low) or _SPACED_OUT_RE.search(f" {low} "):
        return True
    if "".join(tokens).isalpha():
        return False
    # Some token mixes letters with digits or symbols: is one of them leetspeak?
    return any(
        _token_hit(t, lexicon) is not None for t in tokens if not (t.isalpha() or t.isdigit())
    )


def _scan(low: str, lexicon: Lexicon) -> list[Span]:
    spans: list[Span] = []
    matches = list(_TOKEN_RE.finditer(low))
    lowered = [m.group() for m in matches]
    for i, m in enumerate(matches):
        hit = _token_hit(lowered[i], lexicon)
        if hit is not None:
            spans.append((m.start() + hit[0], m.end() - hit[1], "profanity"))
        if lowered[i] in lexicon.phrases:
            phrase = _phrase_end(low, matches, lowered, i, lexicon)
            if phrase is not None:
                spans.append((*phrase, "profanity"))
    spans.extend(_spaced_letters(low, matches, lowered, lexicon))
    return _merge(spans)


def _merge(spans: list[Span]) -> list[Span]:
    """One span per stretch of profanity ("son of a bitch", not also "bitch")."""
    merged: list[Span] = []
    for start, end, label in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]), label)
        else:
            merged.append((start, end, label))
    return merged


def _token_hit(token: str, lexicon: Lexicon) -> tuple[int, int] | None:
    """(chars to skip at the start, chars to skip at the end) if `token` is profane."""
    if token in lexicon.surface:
        return 0, 0
    core = token.lstrip(_STRIP_LEAD)
    lead = len(token) - len(core)
    stripped = core.rstrip(_STRIP_TRAIL)
    trail = len(core) - len(stripped)
    core = stripped
    if len(core) < 2:
        return None
    if core in lexicon.allowed:
        return None
    if core in lexicon.surface or _is_profane_word(core, lexicon):
        return lead, trail
    return None


def _is_profane_word(core: str, lexicon: Lexicon) -> bool:
    words = lexicon.words
    if core.isalpha():
        if _RUN3_RE.search(core) and (
            _RUN3_RE.sub(r"\1\1", core) in words or _RUN2_RE.sub(r"\1", core) in lexicon.squeezed
        ):
            return True
        return _has_stem(core, lexicon)
    letters = sum(c.isalpha() for c in core)
    has_digit = any(c.isdigit() for c in core)
    # "a55" or "A4" are model numbers, "$50" a price: leetspeak keeps most letters as letters.
    if has_digit and letters * 2 < len(core):
        return False
    plain = core.translate(_LEET)
    if plain in words or core.translate(_LEET_L).translate(_LEET) in words:
        return True
    if _RUN3_RE.search(plain) and _RUN2_RE.sub(r"\1", plain) in lexicon.squeezed:
        return True
    if _has_stem(plain, lexicon):
        return True
    if "*" in core:
        return _starred(core, lexicon)
    return False


def _has_stem(word: str, lexicon: Lexicon) -> bool:
    return bool(lexicon.stems) and (word.startswith(lexicon.stems) or word.endswith(lexicon.stems))


def _starred(core: str, lexicon: Lexicon) -> bool:
    """Does a starred token (f*ck, a**hole) stand for a listed word of the same length?"""
    known = len(core) - core.count("*")
    if known < 2 or known * 2 < len(core) - 1:
        return False
    candidates = lexicon.by_length.get(len(core))
    if not candidates:
        return False
    pattern = "".join("[a-z]" if c == "*" else re.escape(c) for c in core.translate(_LEET))
    return re.search(f"^{pattern}$", candidates, re.MULTILINE) is not None


def _phrase_end(
    text: str, matches: list[re.Match[str]], lowered: list[str], i: int, lexicon: Lexicon
) -> tuple[int, int] | None:
    """(start, end) of the longest listed phrase whose key token is token `i`, if any."""
    for parts, key in lexicon.phrases[lowered[i]]:
        first, last = i - key, i - key + len(parts) - 1
        if first < 0 or last >= len(matches):
            continue
        if all(
            lowered[first + k] == parts[k]
            and (
                k == 0
                or _PHRASE_GAP_RE.fullmatch(
                    text, matches[first + k - 1].end(), matches[first + k].start()
                )
            )
            for k in range(len(parts))
        ):
            return matches[first].start(), matches[last].end()
    return None


def _phrase_key(parts: tuple[str, ...], words: set[str]) -> int:
    """Index of the part to look phrases up by: a listed word if there is one (the text takes
    the slow path anyway), else the longest part, the last on a tie ("dog style" -> "style")."""
    listed = [k for k, part in enumerate(parts) if part in words]
    if listed:
        return listed[-1]
    return max(range(len(parts)), key=lambda k: (len(parts[k]), k))


def _spaced_letters(
    text: str, matches: list[re.Match[str]], lowered: list[str], lexicon: Lexicon
) -> list[Span]:
    """Words spelled one letter at a time: "f u c k", "s.h.i.t", "f_u_c_k"."""
    spans: list[Span] = []
    run: list[int] = []
    for i, m in enumerate(matches):
        single = len(lowered[i]) == 1
        joined = (
            run
            and single
            and m.start() - matches[run[-1]].end() == 1
            and text[m.start() - 1] in " ._-"
        )
        if joined:
            run.append(i)
            continue
        spans.extend(_spaced_run(matches, lowered, run, lexicon))
        run = [i] if single else []
    spans.extend(_spaced_run(matches, lowered, run, lexicon))
    return spans


def _spaced_run(
    matches: list[re.Match[str]], lowered: list[str], run: list[int], lexicon: Lexicon
) -> list[Span]:
    if len(run) < 3:
        return []
    letters = "".join(lowered[i] for i in run)
    for size in range(min(len(letters), lexicon.longest), 2, -1):
        for start in range(len(letters) - size + 1):
            word = letters[start : start + size]
            if word in lexicon.spelled or word.translate(_LEET) in lexicon.spelled:
                first, last = matches[run[start]], matches[run[start + size - 1]]
                return [(first.start(), last.end(), "profanity")]
    return []
