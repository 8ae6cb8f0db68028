"""Who is calling: a user (JWT) or the host platform's backend (API key)."""

from __future__ import annotations

from dataclasses import dataclass, field

MODERATOR_ROLES = frozenset({"moderator", "admin"})


@dataclass(frozen=True)
class Principal:
    user_id: str | None
    roles: frozenset[str] = field(default_factory=frozenset)
    api_key_id: str | None = None

    @property
    def is_service(self) -> bool:
        return self.api_key_id is not None

    @property
    def is_moderator(self) -> bool:
        """Platform-wide moderation rights: an API key, or a moderator/admin role claim."""
        return self.is_service or bool(self.roles & MODERATOR_ROLES)

    @property
    def label(self) -> str:
        if self.is_service:
            return f"apikey:{self.api_key_id}"
        return f"user:{self.user_id}" if self.user_id is not None else "system"

    def require_user(self) -> str:
        from domain.errors import Forbidden

        if self.user_id is None:
            raise Forbidden("this action needs a user token, not an API key")
        return self.user_id


SYSTEM = Principal(user_id=None)
"""Parley itself, for actions no person took (e.g. a hold after enough reports)."""
