"""Authentication: user JWTs (algorithm pinned by configuration) and host-platform API keys.

Each web process remembers the credentials it verified lately (`Verified`), so a client that
sends the same bearer token on every request pays for the signature check or the key lookup
once, not per request:

- a user JWT is remembered until it expires (`exp` plus `PARLEY_JWT_LEEWAY_S`, the instant
  PyJWT itself starts refusing it). Its verdict depends only on the token, the time and this
  process's settings, and of those only the time changes it; there is no revocation of JWTs.
- an API key is remembered for `PARLEY_API_KEY_CACHE_S` (default 5 s, 0: never): a key revoked
  with `flask … keys revoke` stops working on every node within that bound.

Only successes are remembered (a refused credential is checked again each time and counts
against the failed-authentication budget, web/limits.py). The key is a BLAKE2b digest of the
whole token, so no secret is kept and no two tokens share an entry; at most `MAX_REMEMBERED`
entries, the oldest dropped first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from flask import Flask, g, request

from core.config import Settings
from core.ids import utcnow
from domain import apikeys
from domain.errors import Unauthorized
from domain.principals import Principal
from domain.users import MAX_USER_ID, upsert_from_claims
from web.http import json_faults, text_fault

logger = logging.getLogger(__name__)


class TokenCodec:
    """Issues and verifies user tokens with exactly one accepted algorithm."""

    def __init__(self, settings: Settings) -> None:
        self.leeway = settings.jwt_leeway_s
        # Optional: a token minted for another service (aud) or by another issuer is refused.
        self.audience = settings.jwt_audience or None
        self.issuer = settings.jwt_issuer or None
        if settings.jwt_public_key:
            self.algorithm = "RS256"
            self.verify_key: Any = settings.jwt_public_key
            self.sign_key: Any = None
        else:
            self.algorithm = "HS256"
            self.verify_key = self.sign_key = _hs_secret(settings)

    def decode(self, token: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self.verify_key,
                algorithms=[self.algorithm],
                leeway=self.leeway,  # also for nbf and iat, which PyJWT checks when present
                audience=self.audience,
                issuer=self.issuer,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the token is not valid: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= MAX_USER_ID:
            raise Unauthorized("the token's sub must be the platform's user id, a string")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthorized("the token's roles claim must be a list of strings")
        # Stored in users: text no database can take is refused here, as in any input
        # (web/http.py); sub is an id, so control characters too.
        stored = {k: claims[k] for k in ("name", "avatar", "roles") if k in claims}
        faults = {path.split(".")[0]: whys[0] for path, whys in json_faults(stored).items()}
        if why := text_fault(sub, ident=True):
            faults["sub"] = why
        if faults:
            name, reason = min(faults.items())
            raise Unauthorized(f"the token's {name} claim {reason}")
        return claims

    @property
    def _required(self) -> list[str]:
        extra = [name for name, on in (("aud", self.audience), ("iss", self.issuer)) if on]
        return ["sub", "exp", *extra]

    def issue(self, user_id: str, *, ttl_s: int = 3600, **claims: Any) -> str:
        if self.sign_key is None:
            raise RuntimeError("RS256 is configured: tokens are issued by the platform, not here")
        now = utcnow()
        payload = {"sub": user_id, "iat": now, "exp": now + timedelta(seconds=ttl_s)}
        if self.audience:
            payload["aud"] = self.audience
        if self.issuer:
            payload["iss"] = self.issuer
        payload.update(claims)
        return jwt.encode(payload, self.sign_key, algorithm=self.algorithm)


MIN_SECRET_BYTES = 32


def _hs_secret(settings: Settings) -> str:
    if settings.jwt_secret:
        if len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise RuntimeError(
                f"PARLEY_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (HS256 needs a key "
                "as long as its hash); generate one with: python -c "
                "'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return settings.jwt_secret
    if settings.env == "production":
        raise RuntimeError(
            "PARLEY_JWT_SECRET (or PARLEY_JWT_PUBLIC_KEY for RS256) must be set in production"
        )
    path = Path(settings.data_dir) / "keys" / "jwt-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        logger.warning("PARLEY_JWT_SECRET unset: generated a local secret in %s", path)
    return path.read_text().strip()


MAX_REMEMBERED = 10_000


class Verified:
    """The bearer tokens this process verified lately: digest -> (good until, principal, claims
    of a JWT or None for an API key). Wall-clock deadlines, as PyJWT's `exp` check."""

    def __init__(self, key_ttl_s: float, size: int = MAX_REMEMBERED) -> None:
        self.key_ttl_s = key_ttl_s
        self.size = size
        self._found: dict[bytes, tuple[float, Principal, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=32).digest()

    def get(self, token: str) -> tuple[Principal, dict[str, Any] | None] | None:
        key = self.digest(token)
        hit = self._found.get(key)
        if hit is None:
            return None
        until, principal, claims = hit
        if time.time() >= until:
            with self._lock:
                self._found.pop(key, None)
            return None
        return principal, claims

    def put(
        self, token: str, principal: Principal, claims: dict[str, Any] | None, until: float
    ) -> None:
        if until <= time.time():
            return
        key = self.digest(token)
        with self._lock:
            while len(self._found) >= self.size:
                self._found.pop(next(iter(self._found)))
            self._found[key] = (until, principal, claims)

    def __len__(self) -> int:
        return len(self._found)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(token: str | None) -> Principal:
    """Resolve a bearer token to a principal, or raise 401."""
    from core.services import services

    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>' (a user JWT or an API key)")
    seen = verified()
    hit = seen.get(token)
    if hit is not None:
        principal, known = hit
        if known is not None:
            _remember_user(known)
        return principal
    if apikeys.looks_like_key(token):
        with services().Session.begin() as s:
            row = apikeys.verify(s, token)
            if row is None:
                raise Unauthorized("unknown or revoked API key")
            if row.last_used_at is None or utcnow() - row.last_used_at > timedelta(minutes=5):
                apikeys.touch(row)
            principal = Principal(user_id=None, api_key_id=row.id)
        if seen.key_ttl_s > 0:
            seen.put(token, principal, None, time.time() + seen.key_ttl_s)
        return principal
    tokens = codec()
    claims = tokens.decode(token)
    principal = Principal(user_id=claims["sub"], roles=frozenset(claims.get("roles", [])))
    _remember_user(claims)
    seen.put(token, principal, claims, int(claims["exp"]) + tokens.leeway)  # as PyJWT reads it
    return principal


def _remember_user(claims: dict[str, Any]) -> None:
    """Upsert the user only when this process has not seen these exact claims (saves a write)."""
    from flask import current_app

    from core.services import services

    _seen_claims: dict[str, tuple[Any, ...]] = current_app.extensions.setdefault(
        "parley_seen_users", {}
    )
    key = (claims.get("name"), claims.get("avatar"), tuple(claims.get("roles", [])))
    if _seen_claims.get(claims["sub"]) == key:
        return
    with services().Session.begin() as s:
        upsert_from_claims(
            s,
            claims["sub"],
            claims.get("name"),
            claims.get("avatar"),
            list(claims.get("roles", [])),
        )
    if len(_seen_claims) > 50_000:
        _seen_claims.clear()
    _seen_claims[claims["sub"]] = key


def codec() -> TokenCodec:
    from flask import current_app

    found: TokenCodec = current_app.extensions["parley_tokens"]
    return found


def verified() -> Verified:
    from flask import current_app

    found: Verified = current_app.extensions["parley_verified"]
    return found


def current() -> Principal:
    principal: Principal = g.principal
    return principal


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["parley_tokens"] = TokenCodec(settings)
    app.extensions["parley_verified"] = Verified(settings.api_key_cache_s)


def require_auth() -> None:
    """before_request hook for API blueprints."""
    g.principal = authenticate(_bearer())
