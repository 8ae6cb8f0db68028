"""CORS (flask-cors, configured in web/security.py): what a browser page on another origin is
allowed to send and to read. The allow-list and preflight basics are in tests/test_ops.py; these
pin the rest of the contract: every exposed header, the preflight cache, `*`, requests without
an `Origin`, and origins matched whole and literally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.conftest import JWT_SECRET, Stack

ONE_DATABASE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
EXPOSED = {"X-Request-ID", "Retry-After", "Location", "Content-Disposition", "ETag"}


@pytest.fixture
def make_app(stack: Stack) -> Callable[..., Flask]:
    """An app on the stack's database and Redis with other CORS settings."""
    from web import create_app

    def build(**overrides: Any) -> Flask:
        s = stack.svc.settings
        return create_app(
            {
                "database_url": s.database_url,
                "redis_url": s.redis_url,
                "broker_url": s.broker_url,
                "data_dir": stack.data_dir,
                "jwt_secret": JWT_SECRET,
                "moderation_policies": s.moderation_policies,
                "testing": True,
                **overrides,
            }
        )

    return build


def _listed(raw: str) -> set[str]:
    return {h.strip() for h in raw.split(",")}


@ONE_DATABASE
def test_a_listed_origin_may_read_every_exposed_header_and_cache_its_preflight(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(cors_origins="https://app.example").test_client()
    pre = client.options(
        "/v1/conversations/c-1/messages",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "range, If-Range, X-Request-ID, Cookie",
        },
    )
    assert pre.status_code == 204 and pre.data == b""
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert pre.headers["Access-Control-Max-Age"] == "600"
    assert _listed(pre.headers["Access-Control-Allow-Methods"]) >= {
        "GET",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
    }
    allowed = {h.lower() for h in _listed(pre.headers["Access-Control-Allow-Headers"])}
    assert allowed == {"range", "if-range", "x-request-id"}  # never a cookie
    # an answer (here a 401 problem: no token) lets the page read what clients need
    resp = client.get("/v1/conversations", headers={"Origin": "https://app.example"})
    assert resp.status_code == 401
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert _listed(resp.headers["Access-Control-Expose-Headers"]) == EXPOSED
    assert "Access-Control-Allow-Credentials" not in resp.headers


@ONE_DATABASE
def test_a_star_answers_star_and_no_origin_gets_no_cors_headers_but_vary(
    make_app: Callable[..., Flask],
) -> None:
    star = make_app(cors_origins="*").test_client()
    resp = star.get("/v1/conversations", headers={"Origin": "https://anyone.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    listed = make_app(cors_origins="https://app.example, https://admin.example").test_client()
    for client in (star, listed):
        plain = client.get("/v1/conversations")  # a server or an app: no Origin, not a browser
        assert not [k for k, _ in plain.headers.items() if k.startswith("Access-Control-")]
        assert "Origin" in plain.headers.get_all("Vary")  # the answer still depends on Origin


@ONE_DATABASE
def test_listed_origins_match_whole_and_literally(make_app: Callable[..., Flask]) -> None:
    """An IPv6 literal is not a regular expression, and no listed origin is a prefix."""
    client = make_app(cors_origins="https://app.example, http://[::1]:8080/").test_client()

    def allowed(origin: str) -> str | None:
        resp = client.get("/v1/conversations", headers={"Origin": origin})
        assert "Origin" in resp.headers.get_all("Vary")
        return resp.headers.get("Access-Control-Allow-Origin")

    assert allowed("http://[::1]:8080") == "http://[::1]:8080"
    assert allowed("http://1:8080") is None
    assert allowed("https://app.example") == "https://app.example"
    for impostor in (
        "https://app.example.evil.example",
        "https://app.examplex",
        "http://app.example",
    ):
        assert allowed(impostor) is None
