"""Edge security (web/security.py): security headers on every answer and problem, CORS (the
allow-list, preflight, every exposed header, the preflight cache, `*`, requests without an
`Origin`, origins matched whole and literally, never credentials, no wildcard in production), a
body over the limit as a 413 problem, and NUL characters refused before they reach the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask import Flask

from tests.conftest import Stack
from tests.factories import ONE_DATABASE, Api, uid

EXPOSED = {"X-Request-ID", "Retry-After", "Location", "Content-Disposition", "ETag"}


@ONE_DATABASE
def test_security_headers_on_answers_and_problems(api: Api, make_app: Callable[..., Flask]) -> None:
    for resp in (api.get("/healthz"), api.get("/v1/conversations"), api.get("/nowhere")):
        h = resp.headers
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["X-Frame-Options"] == "DENY"
        assert h["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in h["Content-Security-Policy"]
        assert "Strict-Transport-Security" not in h
    hsts = make_app(hsts_seconds=31536000).test_client().get("/healthz")
    assert hsts.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


@ONE_DATABASE
def test_cors_allows_listed_origins_answers_preflight_and_never_credentials(
    stack: Stack, make_app: Callable[..., Flask]
) -> None:
    client = make_app(cors_origins="https://app.example, https://admin.example").test_client()
    pre = client.options(
        "/v1/conversations",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type, X-Evil",
        },
    )
    assert pre.status_code == 204  # before authentication: browsers send no token here
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    refused = client.options(
        "/v1/conversations",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
    token = Api(stack).token(uid())
    real = client.get(
        "/v1/conversations",
        headers={"Origin": "https://admin.example", "Authorization": f"Bearer {token}"},
    )
    assert real.status_code == 200
    assert real.headers["Access-Control-Allow-Origin"] == "https://admin.example"
    assert "Origin" in real.headers.get_all("Vary")
    assert "X-Request-ID" in real.headers["Access-Control-Expose-Headers"]
    for resp in (pre, refused, real):
        assert "Access-Control-Allow-Credentials" not in resp.headers


@ONE_DATABASE
def test_cors_wildcard_is_refused_in_production(stack: Stack) -> None:
    from core.config import with_overrides
    from web import security

    settings = with_overrides(stack.svc.settings, env="production", cors_origins="*")
    with pytest.raises(RuntimeError, match="PARLEY_CORS_ORIGINS"):
        security.init_app(Flask(__name__), settings)


@ONE_DATABASE
def test_a_body_over_the_limit_is_413_problem_and_nothing_is_posted(api: Api) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    huge = json.dumps({"text": "x" * (300 * 1024)})
    resp = api.post(
        f"/v1/conversations/{cid}/messages", user=a, data=huge, content_type="application/json"
    )
    assert resp.status_code == 413
    assert resp.content_type == "application/problem+json"
    assert resp.get_json()["status"] == 413
    assert api.get(f"/v1/conversations/{cid}/messages", user=b).get_json()["items"] == []


def test_nul_characters_are_refused_before_they_reach_the_database(api: Api) -> None:
    """PostgreSQL refuses NUL in text and JSON: it must be a 4xx problem on both databases,
    in a body field (422 naming it), a metadata key, a query parameter or the path (400)."""
    owner = uid()
    resp = api.post(
        "/v1/conversations",
        user=owner,
        json={"type": "group", "members": [uid()], "subject": "a\x00b", "metadata": {"k\x00": 1}},
    )
    assert resp.status_code == 422
    assert set(resp.get_json()["errors"]) == {"subject", "metadata"}
    assert api.get("/v1/conversations?cursor=%00", user=owner).status_code == 400
    assert api.get("/v1/conversations/ab%00cd", user=owner).status_code == 400


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
