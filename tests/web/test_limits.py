"""Rate limits (web/limits.py): off under test unless a test turns them on; per-user and per-IP
budgets for posting, creating conversations and uploads answer 429 problems with Retry-After;
failed authentication is budgeted per client address behind a trusted proxy; bad settings stop
start-up; and when the counter store (Redis) is down the limits fail open and say so in the log.
Counters live in the suite's Redis, so each test gets addresses of its own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.conftest import JWT_SECRET, Stack, free_port
from tests.factories import ONE_DATABASE, Api, uid


def api_for(stack: Stack, app: Flask) -> Api:
    api = Api(stack)
    api.client = app.test_client()
    return api


def an_ip() -> dict[str, Any]:
    """A client address of its own, so counters in the shared Redis never meet another test's."""
    raw = uuid.uuid4().bytes
    return {"environ_base": {"REMOTE_ADDR": f"10.{raw[0]}.{raw[1]}.{raw[2]}"}}


@ONE_DATABASE
def test_limits_are_off_under_test_unless_a_test_turns_them_on(
    api: Api, stack: Stack, make_app: Callable[..., Flask]
) -> None:
    assert "parley_limiter" not in stack.app.extensions
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    for i in range(35):  # more than the default 30 per 10 s
        api.send(a, cid, f"unthrottled {i}")
    assert "parley_limiter" in make_app(rate_limits="on").extensions


@ONE_DATABASE
def test_posting_over_the_per_user_budget_is_429_with_retry_after_and_changes_nothing(
    stack: Stack, make_app: Callable[..., Flask]
) -> None:
    api = api_for(stack, make_app(rate_limits="on", limit_post_user="3/minute"))
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    for i in range(3):
        api.send(a, cid, f"within budget {i}")
    resp = api.post(f"/v1/conversations/{cid}/messages", user=a, json={"text": "one too many"})
    assert resp.status_code == 429
    assert resp.content_type == "application/problem+json"
    problem = resp.get_json()
    assert problem["status"] == 429 and "per user" in problem["detail"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    listed = api.get(f"/v1/conversations/{cid}/messages", user=a).get_json()["items"]
    assert [m["text"] for m in listed] == [f"within budget {i}" for i in range(3)]
    # another member has a budget of their own; an API key (the platform) is not limited
    assert (
        api.post(f"/v1/conversations/{cid}/messages", user=b, json={"text": "hi"}).status_code
        == 202
    )
    key = api.api_key()
    for i in range(4):
        sent = api.post(
            f"/v1/conversations/{cid}/messages",
            key=key,
            json={"text": f"sys {i}", "type": "system"},
        )
        assert sent.status_code in (200, 202), sent.get_json()


@ONE_DATABASE
def test_posting_is_limited_per_ip_across_users(
    stack: Stack, make_app: Callable[..., Flask]
) -> None:
    api = api_for(stack, make_app(rate_limits="on", limit_post_ip="4/minute"))
    users = [uid() for _ in range(3)]
    cid = api.conversation(users[0], *users[1:])
    same_ip = an_ip()
    codes = [
        api.post(
            f"/v1/conversations/{cid}/messages", user=users[i % 3], json={"text": "x"}, **same_ip
        ).status_code
        for i in range(5)
    ]
    assert codes == [202, 202, 202, 202, 429]
    other = api.post(
        f"/v1/conversations/{cid}/messages", user=users[0], json={"text": "y"}, **an_ip()
    )
    assert other.status_code == 202


@ONE_DATABASE
def test_creating_conversations_is_limited_per_user(
    stack: Stack, make_app: Callable[..., Flask]
) -> None:
    api = api_for(stack, make_app(rate_limits="on", limit_conversation_user="2/minute"))
    owner = uid()
    codes = [
        api.post(
            "/v1/conversations", user=owner, json={"type": "group", "members": [uid()]}
        ).status_code
        for _ in range(3)
    ]
    assert codes == [201, 201, 429]


@ONE_DATABASE
def test_uploads_are_limited_by_endpoint_name(stack: Stack, make_app: Callable[..., Flask]) -> None:
    app = make_app(rate_limits="on", limit_upload_user="1/minute")
    if "attachments.api.upload" not in app.view_functions:
        pytest.skip("no upload endpoint in this build")
    api = api_for(stack, app)
    user = uid()
    first = api.post("/v1/attachments", user=user, data=b"", content_type="text/plain")
    assert first.status_code != 429
    second = api.post("/v1/attachments", user=user, data=b"", content_type="text/plain")
    assert second.status_code == 429 and "Retry-After" in second.headers


@ONE_DATABASE
def test_failed_authentication_is_budgeted_per_ip_then_every_request_is_429(
    stack: Stack, make_app: Callable[..., Flask]
) -> None:
    """Behind one trusted proxy the client address is the last X-Forwarded-For entry (the one
    the proxy added); what the client wrote before it cannot move it to a fresh budget."""
    app = make_app(rate_limits="on", limit_failed_auth_ip="3/minute", trusted_proxies=1)
    api = api_for(stack, app)
    attacker = {"X-Forwarded-For": f"10.9.9.9, 192.0.2.{uuid.uuid4().int % 250}"}
    bad = {"Authorization": "Bearer pk_nope_guess", **attacker}
    codes = [api.get("/v1/conversations", headers=bad).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    good = api.get("/v1/conversations", user=uid(), headers=attacker)
    assert good.status_code == 429 and good.content_type == "application/problem+json"
    assert int(good.headers["Retry-After"]) >= 1
    spoofed = {"X-Forwarded-For": f"198.51.100.1, {attacker['X-Forwarded-For'].split(', ')[1]}"}
    assert api.get("/v1/conversations", user=uid(), headers=spoofed).status_code == 429
    bystander = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250}"}
    assert api.get("/v1/conversations", user=uid(), headers=bystander).status_code == 200
    assert api.get("/healthz", headers=attacker).status_code == 200  # probes are not blocked


@ONE_DATABASE
def test_bad_limit_settings_stop_start_up_with_the_variable_named(
    make_app: Callable[..., Flask],
) -> None:
    with pytest.raises(RuntimeError, match="PARLEY_LIMIT_FAILED_AUTH_IP"):
        make_app(limit_failed_auth_ip="lots")
    with pytest.raises(RuntimeError, match="PARLEY_LIMIT_POST_USER"):
        make_app(limit_post_user="30 per fortnight")
    with pytest.raises(RuntimeError, match="PARLEY_RATE_LIMITS"):
        make_app(rate_limits="maybe")


@ONE_DATABASE
def test_limits_fail_open_and_log_when_redis_is_unreachable(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    from web import create_app

    s = stack.svc.settings
    app = create_app(
        {
            "database_url": s.database_url,
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
            "broker_url": s.broker_url,
            "data_dir": stack.data_dir,
            "jwt_secret": JWT_SECRET,
            "moderation_policies": s.moderation_policies,
            "testing": True,
            "rate_limits": "on",
            "limit_conversation_user": "1/minute",
            "limit_failed_auth_ip": "1/minute",
        }
    )
    api = Api(stack)
    api.client = app.test_client()
    owner = uid()
    with caplog.at_level(logging.INFO):
        codes = [
            api.post(
                "/v1/conversations", user=owner, json={"type": "group", "members": [uid()]}
            ).status_code
            for _ in range(3)
        ]
        assert codes == [201, 201, 201]  # over a 1/minute budget: nothing counted it
        bad = {"Authorization": "Bearer pk_nope_guess"}
        assert [api.get("/v1/conversations", headers=bad).status_code for _ in range(3)] == [
            401,
            401,
            401,
        ]
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(r.name == "flask-limiter" for r in logged), [r.getMessage() for r in logged]
    assert any(r.name == "web.limits" and "failed-auth" in r.getMessage() for r in logged)
