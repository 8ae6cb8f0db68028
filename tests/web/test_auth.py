"""Authentication: RS256 as an option, the algorithm pinned, claims checked."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.ids import utcnow
from tests.conftest import JWT_SECRET, Stack
from tests.factories import uid


def _rsa_pair() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


def test_rs256_tokens_are_accepted_and_hs256_is_refused_when_a_public_key_is_set(
    stack: Stack, tmp_path: Path
) -> None:
    from web import create_app

    private, public = _rsa_pair()
    app = create_app(
        {
            "database_url": stack.svc.settings.database_url,
            "redis_url": stack.svc.settings.redis_url,
            "data_dir": stack.data_dir,
            "jwt_public_key": public,
            "testing": True,
        }
    )
    client = app.test_client()
    claims = {"sub": uid(), "exp": utcnow() + timedelta(minutes=5), "name": "Rosa"}
    good = jwt.encode(claims, private, algorithm="RS256")
    assert (
        client.get("/v1/conversations", headers={"Authorization": f"Bearer {good}"}).status_code
        == 200
    )
    # the classic confusion attack: an HS256 token "signed" with the public key
    forged = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    resp = client.get("/v1/conversations", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status_code == 401
    assert resp.content_type == "application/problem+json"
    app.extensions["parley"].engine.dispose()


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": 1}, "sub"),
        ({"sub": "x"}, "exp"),
        ({"sub": 42, "exp": 4102444800}, "sub"),
        ({"sub": "x" * 200, "exp": 4102444800}, "sub"),
        ({"sub": "x", "exp": 4102444800, "roles": "admin"}, "roles"),
    ],
)
def test_tokens_with_missing_or_malformed_claims_are_401(
    stack: Stack, claims: dict, why: str
) -> None:
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    resp = stack.app.test_client().get(
        "/v1/conversations", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 401, why
    assert resp.get_json()["detail"]


def test_a_short_jwt_secret_stops_start_up_with_a_clear_message(stack: Stack) -> None:
    from web import create_app

    with pytest.raises(RuntimeError, match="at least 32 bytes"):
        create_app(
            {
                "database_url": stack.svc.settings.database_url,
                "redis_url": stack.svc.settings.redis_url,
                "data_dir": stack.data_dir,
                "jwt_secret": "short",
                "testing": True,
            }
        )


def test_production_without_a_jwt_secret_refuses_to_start(stack: Stack, tmp_path: Path) -> None:
    from web import create_app

    with pytest.raises(RuntimeError, match="must be set in production"):
        create_app(
            {
                "database_url": stack.svc.settings.database_url,
                "redis_url": stack.svc.settings.redis_url,
                "data_dir": tmp_path,
                "env": "production",
                "jwt_secret": "",
                "testing": True,
            }
        )
