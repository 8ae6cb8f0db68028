"""Server API keys: `pk_<prefix>_<secret>`; only a SHA-256 of the whole key is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.ids import utcnow
from models import ApiKey

KEY_PREFIX = "pk_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, name: str) -> tuple[ApiKey, str]:
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, prefix=prefix, secret_hash=_hash(key))
    session.add(row)
    return row, key


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX) and token.count("_") >= 2


def verify(session: Session, key: str) -> ApiKey | None:
    prefix = key[len(KEY_PREFIX) :].split("_", 1)[0]
    digest = _hash(key)
    for row in session.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ):
        if hmac.compare_digest(row.secret_hash, digest):
            return row
    return None


def touch(row: ApiKey) -> None:
    row.last_used_at = utcnow()
