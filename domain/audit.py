"""Audit log: who did what to which object, when and why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from domain.principals import Principal
from models import AuditEntry


def record(
    session: Session,
    who: Principal,
    action: str,
    target_type: str,
    target_id: str,
    *,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            actor=who.label,
            action=action,
            target_type=target_type,
            target_id=target_id,
            reason=reason,
            detail=dict(detail or {}),
        )
    )
