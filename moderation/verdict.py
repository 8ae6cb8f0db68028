"""The outcome of moderating one text, and the span arithmetic that builds it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from moderation.policy import ACTION_STRENGTH, CONTACT_LABELS, LABELS, Action, Label, Policy

# (start, end, label): character offsets into the original text, end exclusive.
Span = tuple[int, int, Label]
MASK_CHAR = "*"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the pipeline does with a message, and what the sender/moderators are shown."""

    action: Action
    labels: list[Label] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    masked: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The public `moderation` object of the API: `{"action": ..., "labels": [...]}`."""
        return {"action": self.action, "labels": list(self.labels)}


def build_verdict(text: str, found: Iterable[Span], policy: Policy) -> Verdict:
    """Apply `policy` to the raw detector spans of `text`."""
    raw = sorted(found)
    if not raw:
        return Verdict(action="allow", masked=text)
    labels = sorted({label for _, _, label in raw})
    actions = {label: policy.action_for(label) for label in labels}
    action = max(actions.values(), key=ACTION_STRENGTH.__getitem__)
    return Verdict(
        action=action,
        labels=labels,
        spans=merge_spans(raw, actions),
        masked=mask_text(text, raw, actions),
        reason=_reason(action, actions),
    )


def merge_spans(spans: list[Span], actions: dict[Label, Action]) -> list[Span]:
    """Merge overlapping spans of sorted `spans`; a merged span keeps its strongest label.

    Strongest by the action the policy gives it, so a reviewer looking at a held message sees
    the label that caused the hold.
    """
    merged: list[Span] = []
    for start, end, label in spans:
        if merged and start < merged[-1][1]:
            last_start, last_end, last_label = merged[-1]
            if ACTION_STRENGTH[actions[label]] > ACTION_STRENGTH[actions[last_label]]:
                last_label = label
            merged[-1] = (last_start, max(end, last_end), last_label)
        else:
            merged.append((start, end, label))
    return merged


def mask_text(text: str, spans: list[Span], actions: dict[Label, Action]) -> str:
    """`text` with each span whose label is masked by policy replaced by stars, same length."""
    masked = [(s, e) for s, e, label in spans if actions[label] == "mask"]
    if not masked:
        return text
    parts: list[str] = []
    pos = 0
    for start, end in masked:
        start = max(start, pos)
        if end <= start:
            continue
        parts.append(text[pos:start])
        parts.append(MASK_CHAR * (end - start))
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _reason(action: Action, actions: dict[Label, Action]) -> str:
    if action not in ("hold", "reject"):
        return ""
    causes = [label for label, a in actions.items() if a == action]
    parts = []
    if "profanity" in causes:
        parts.append("profanity is not allowed")
    contacts = [label for label in LABELS if label in causes and label in CONTACT_LABELS]
    if contacts:
        parts.append(f"contact details are not allowed: {', '.join(contacts)}")
    return "; ".join(parts)
