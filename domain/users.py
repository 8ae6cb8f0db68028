"""Users are known from their first valid token or from an API call that names them."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import User

MAX_USER_ID = 128


def ensure_users(session: Session, user_ids: Iterable[str]) -> None:
    ids = set(user_ids)
    if not ids:
        return
    known = set(session.scalars(select(User.id).where(User.id.in_(ids))))
    for uid in ids - known:
        session.add(User(id=uid, roles=[]))
    session.flush()


def upsert_from_claims(
    session: Session, user_id: str, name: str | None, avatar: str | None, roles: list[str]
) -> None:
    user = session.get(User, user_id)
    if user is None:
        session.add(User(id=user_id, name=name, avatar_url=avatar, roles=roles))
    elif (user.name, user.avatar_url, user.roles) != (name, avatar, roles):
        user.name, user.avatar_url, user.roles = name, avatar, roles
