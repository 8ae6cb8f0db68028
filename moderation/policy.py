"""What to do with each kind of finding, per conversation type.

Detection (what is in a text) and policy (what we do about it) are kept apart so a host platform
can change its mind about, say, links in group chats with configuration instead of code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Literal, cast

Label = Literal["profanity", "phone", "email", "url"]
Action = Literal["allow", "mask", "hold", "reject"]

LABELS: tuple[Label, ...] = ("profanity", "phone", "email", "url")
CONTACT_LABELS: frozenset[Label] = frozenset({"phone", "email", "url"})
# Ordered weakest to strongest: a verdict takes the strongest action among its labels.
ACTIONS: tuple[Action, ...] = ("allow", "mask", "hold", "reject")
ACTION_STRENGTH: Mapping[Action, int] = MappingProxyType({a: i for i, a in enumerate(ACTIONS)})

CONVERSATION_TYPES: tuple[str, ...] = ("direct", "group", "support")
# Unknown conversation types get the direct-chat policy: it is the strictest default, so a new
# type added by the platform never leaks contact details before someone configures it.
FALLBACK_CONVERSATION_TYPE = "direct"


@dataclass(frozen=True, slots=True)
class Policy:
    """The action taken for each label; labels a text does not carry are irrelevant."""

    profanity: Action = "allow"
    phone: Action = "allow"
    email: Action = "allow"
    url: Action = "allow"

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_action(field.name, getattr(self, field.name))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str], base: Policy | None = None) -> Policy:
        """Build a policy from `{label: action}`; labels not named keep `base`'s action.

        Raises ValueError naming the offending key or value, so a typo in configuration fails
        at start-up with a message an operator can act on.
        """
        if not isinstance(mapping, Mapping):
            raise ValueError(f"a policy must be a mapping of label to action, got {mapping!r}")
        changes: dict[str, Action] = {}
        for label, action in mapping.items():
            if label not in LABELS:
                raise ValueError(
                    f"unknown moderation label {label!r}; expected one of {', '.join(LABELS)}"
                )
            changes[label] = _check_action(label, action)
        return replace(base or cls(), **changes)

    def action_for(self, label: str) -> Action:
        """The action for `label`."""
        if label not in LABELS:
            raise ValueError(f"unknown moderation label {label!r}")
        return cast(Action, getattr(self, label))

    def as_dict(self) -> dict[str, Action]:
        """`{label: action}` for every label, e.g. for logging the effective configuration."""
        return {label: self.action_for(label) for label in LABELS}


def _check_action(label: str, action: object) -> Action:
    if action not in ACTIONS:
        raise ValueError(
            f"unknown moderation action {action!r} for {label!r}; "
            f"expected one of {', '.join(ACTIONS)}"
        )
    return cast(Action, action)


# Why these defaults: see docs/moderation.md. In short, masking keeps the conversation flowing
# (the recipient still reads the message) while stopping off-platform deals; support desks
# legitimately exchange contact details, so only profanity is masked there.
_MARKETPLACE = Policy(profanity="mask", phone="mask", email="mask", url="mask")
DEFAULT_POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        "direct": _MARKETPLACE,
        "group": _MARKETPLACE,
        "support": Policy(profanity="mask", phone="allow", email="allow", url="allow"),
    }
)


def policy_for(conv_type: str, overrides: Mapping[str, Mapping[str, str]] | None = None) -> Policy:
    """The policy for a conversation type: the default, with `overrides[conv_type]` over it.

    `overrides` is `{conversation type: {label: action}}`, e.g. parsed from configuration with
    `parse_policy_overrides`. Unknown conversation types fall back to the direct-chat policy.
    """
    known = conv_type if conv_type in DEFAULT_POLICIES else FALLBACK_CONVERSATION_TYPE
    policy = DEFAULT_POLICIES[known]
    if overrides:
        _check_override_types(overrides)
        override = overrides.get(known)
        if override:
            policy = Policy.from_mapping(override, base=policy)
    return policy


def _check_override_types(overrides: Mapping[str, Mapping[str, str]]) -> None:
    for conv_type in overrides:
        if conv_type not in DEFAULT_POLICIES:
            raise ValueError(
                f"unknown conversation type {conv_type!r} in moderation policy overrides; "
                f"expected one of {', '.join(CONVERSATION_TYPES)}"
            )


def parse_policy_overrides(raw: str) -> dict[str, dict[str, str]]:
    """Parse and validate overrides written as JSON, e.g. from an environment variable.

    `'{"group": {"url": "allow"}, "direct": {"phone": "hold"}}'`; an empty string means none.
    Raises ValueError with a readable message on malformed JSON or unknown names.
    """
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"moderation policy overrides are not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise ValueError('moderation policy overrides must look like {"group": {"url": "allow"}}')
    _check_override_types(parsed)
    for conv_type, mapping in parsed.items():
        Policy.from_mapping(mapping, base=DEFAULT_POLICIES[conv_type])
    return parsed
