"""Rate limits when their counter store is down (web/limits.py): they fail open, and say so in
the log. The budgets themselves are proven in tests/test_ops.py.

The app's `REDIS_URL` points at a closed port (the broker stays the suite's Redis), so the
limiter's real Redis client gets a real connection refusal.
"""

from __future__ import annotations

import logging

import pytest

from tests.conftest import JWT_SECRET, Stack, free_port
from tests.factories import Api, uid

ONE_DATABASE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)


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
