"""Pure, fast text moderation: profanity and contact details (phone, e-mail, links).

No Flask, Celery, SQLAlchemy or Redis here: the pipeline task loads the message, calls
`moderate(text, policy_for(conversation.type, overrides))` and stores the verdict.
"""

from moderation.engine import detect, moderate
from moderation.phone import DEFAULT_PHONE_REGIONS
from moderation.policy import (
    ACTIONS,
    DEFAULT_POLICIES,
    LABELS,
    Action,
    Label,
    Policy,
    parse_policy_overrides,
    policy_for,
)
from moderation.profanity import (
    DEFAULT_ALLOWED_WORDS,
    DEFAULT_EXTRA_WORDS,
    Lexicon,
    default_lexicon,
)
from moderation.verdict import Span, Verdict

__all__ = [
    "ACTIONS",
    "DEFAULT_ALLOWED_WORDS",
    "DEFAULT_EXTRA_WORDS",
    "DEFAULT_PHONE_REGIONS",
    "DEFAULT_POLICIES",
    "LABELS",
    "Action",
    "Label",
    "Lexicon",
    "Policy",
    "Span",
    "Verdict",
    "default_lexicon",
    "detect",
    "moderate",
    "parse_policy_overrides",
    "policy_for",
]
