"""Domain vocabulary shared by the e-mail and link detectors.

Deliberately a curated set rather than the full IANA list (1,400+ TLDs, many of them English
words or file extensions): a bare "report.zip" or "done.it" in chat is far more often a file name
or a missing space than a link.
"""

from __future__ import annotations

from moderation.text import words_of

# Top-level domains we accept after a bare "name.tld" (no scheme, no www).
URL_TLDS: frozenset[str] = words_of(
    """
    com net org info biz edu gov mil int io co uk de np ca au nz fr es nl ru cn jp br ch se dk
    pl ae sg pk bd lk ly gg xyz cc tv fm gl ee gle eu ie za ke ng gh mx ar cl cz vn th kr hk tw
    tr gr pt ro hu fi ua qa sa asia mobi
    """
)

# Newer generic TLDs that are English words: "house.today" or "ok.thanks" typed without a space
# is more common in chat than a bare "cafe.shop". Accepted with a path, www, a second level, or a
# label no sentence has ("handicrafts-nepal.store", "cafe24.shop").
WORD_TLDS: frozenset[str] = words_of(
    """
    app dev shop store online site website tech live link club top travel tours holiday rentals
    homes house page blog news media agency studio design art email cloud host space world
    today life photos photography pics gallery pro name
    """
)

# Real TLDs that are also everyday English words; "name.in" is as often "done.in the morning"
# typed without a space. Accepted only with a path, a known link domain or a second level
# ("co.in", "com.np").
AMBIGUOUS_TLDS: frozenset[str] = words_of(
    "in me it is to at be no so us my do go am as by he hi id im ok"
)

# Second-level labels under a country code: "mysite.co.uk", "shop.com.np".
SECOND_LEVEL: frozenset[str] = words_of("co com net org ac gov edu nic ltd plc or ne go")

# Short links and messenger / payment / social hosts people use to move a deal off-platform.
KNOWN_LINK_DOMAINS: frozenset[str] = words_of(
    """
    wa.me t.me m.me fb.me ig.me paypal.me telegram.me amzn.to wa.link youtu.be t.co bit.ly
    tinyurl.com linktr.ee goo.gl forms.gle cash.app venmo.com paypal.com instagram.com
    facebook.com x.com twitter.com tiktok.com snapchat.com
    """
)

# TLDs accepted when the dot is spelled out ("example dot com"): the ones people actually say.
SPOKEN_TLDS: frozenset[str] = words_of(
    "com net org info biz io co uk np de ca au nz edu gov fr es nl ae pk bd lk sg ly ee xyz"
)

# Mail providers: "raj at gmail" is an address even without ".com".
MAIL_PROVIDERS: frozenset[str] = words_of(
    """
    gmail googlemail yahoo ymail hotmail outlook live msn icloud aol protonmail proton gmx
    yandex zoho rediffmail rediff libero btinternet
    """
)
