"""Verified credentials remembered per web process (web/auth.py `Verified`): a revoked API key
stops working within PARLEY_API_KEY_CACHE_S, an expired JWT at its expiry, and only the very
token that was verified is remembered."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import jwt
import pytest
from flask import Flask

from core.ids import utcnow
from domain import apikeys
from domain.principals import Principal
from tests.conftest import JWT_SECRET, Stack
from tests.factories import ONE_DATABASE, uid
from web.auth import Verified


def _key(stack: Stack) -> tuple[str, str]:
    with stack.svc.Session.begin() as s:
        row, key = apikeys.create(s, "cache-test")
        s.flush()
        return row.id, key


def _status(app: Flask, token: str) -> int:
    resp = app.test_client().get("/v1/conversations", headers={"Authorization": f"Bearer {token}"})
    return resp.status_code


def _revoke(app: Flask, key_id: str) -> None:
    result = app.test_cli_runner().invoke(args=["keys", "revoke", key_id])
    assert result.exit_code == 0, result.output


@ONE_DATABASE
@pytest.mark.parametrize(
    ("cache_s", "wait_s", "after"),
    [
        (0.5, 0.6, 401),  # the bound has passed: refused
        (60, 0.0, 200),  # within the bound this process does not read the key's row again
        (0, 0.0, 401),  # no cache: refused at once
    ],
)
def test_a_revoked_api_key_stops_working_once_the_cache_bound_has_passed(
    stack: Stack, make_app: Callable[..., Flask], cache_s: float, wait_s: float, after: int
) -> None:
    app = make_app(api_key_cache_s=cache_s)
    key_id, key = _key(stack)
    assert _status(app, key) == 200
    _revoke(app, key_id)
    time.sleep(wait_s)
    assert _status(app, key) == after
    assert _status(make_app(api_key_cache_s=cache_s), key) == 401  # another process: at once


@ONE_DATABASE
def test_a_remembered_jwt_is_refused_once_it_expires(make_app: Callable[..., Flask]) -> None:
    app = make_app(jwt_leeway_s=0)
    exp = int(time.time()) + 2
    token = jwt.encode({"sub": uid(), "exp": exp}, JWT_SECRET, algorithm="HS256")
    assert _status(app, token) == 200
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    assert _status(app, token) == 401


@ONE_DATABASE
def test_only_the_token_verified_is_remembered(make_app: Callable[..., Flask]) -> None:
    """A token with the same claims but another signature, or a token this app's secret did
    not sign, is checked in full and refused, right after a good one was remembered."""
    app = make_app()
    claims = {"sub": uid(), "exp": utcnow() + timedelta(minutes=5)}
    good = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    assert _status(app, good) == 200
    head, payload, sig = good.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    assert _status(app, forged) == 401
    other = make_app(jwt_secret="another-secret-of-at-least-32-bytes-long!!")
    assert _status(other, good) == 401
    assert _status(app, good) == 200


def test_the_cache_holds_at_most_its_size_dropping_the_oldest() -> None:
    seen = Verified(key_ttl_s=5, size=3)
    until = time.time() + 60
    for n in range(4):
        seen.put(f"token-{n}", Principal(user_id=f"u{n}"), None, until)
    assert len(seen) == 3
    assert seen.get("token-0") is None
    hit = seen.get("token-3")
    assert hit is not None and hit[0].user_id == "u3"
    seen.put("token-late", Principal(user_id="late"), None, time.time() - 1)
    assert seen.get("token-late") is None
