"""JWT claims (web/auth.py): when an audience and an issuer are configured a token must carry
both (an audience list may include ours; the CLI's own tokens do), and `nbf` is enforced with
the small leeway allowed for clock skew.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
from flask import Flask

from core.ids import utcnow
from tests.conftest import JWT_SECRET
from tests.factories import ONE_DATABASE, Api, uid


def _token(**claims: Any) -> str:
    base = {"sub": uid(), "exp": utcnow() + timedelta(minutes=5)}
    return jwt.encode({**base, **claims}, JWT_SECRET, algorithm="HS256")


@ONE_DATABASE
def test_audience_and_issuer_are_required_when_configured(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(jwt_audience="parley", jwt_issuer="https://platform.example")
    client = app.test_client()

    def status(token: str) -> int:
        return client.get(
            "/v1/conversations", headers={"Authorization": f"Bearer {token}"}
        ).status_code

    assert status(_token(aud="parley", iss="https://platform.example")) == 200
    assert status(_token(aud=["other", "parley"], iss="https://platform.example")) == 200
    assert status(_token(iss="https://platform.example")) == 401  # no aud
    assert status(_token(aud="other", iss="https://platform.example")) == 401
    assert status(_token(aud="parley")) == 401  # no iss
    assert status(_token(aud="parley", iss="https://evil.example")) == 401
    with app.app_context():
        from web.auth import codec

        assert status(codec().issue(uid())) == 200  # the CLI's tokens carry both


@ONE_DATABASE
def test_not_before_is_enforced_with_the_small_leeway(api: Api) -> None:
    soon = utcnow() + timedelta(seconds=5)  # inside the 10 s leeway: clock skew
    later = utcnow() + timedelta(minutes=2)
    ok = api.get("/v1/conversations", headers={"Authorization": f"Bearer {_token(nbf=soon)}"})
    assert ok.status_code == 200
    early = api.get("/v1/conversations", headers={"Authorization": f"Bearer {_token(nbf=later)}"})
    assert early.status_code == 401 and "not yet valid" in early.get_json()["detail"]
