"""The HTTP contract: OpenAPI completeness, health, problem+json everywhere, request ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import RedisServer, Stack, _make_stack
from tests.factories import Api, uid


def test_openapi_describes_every_route_with_problem_responses(api: Api, stack: Stack) -> None:
    spec = api.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule in stack.app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi.openapi_json") or rule.rule == "/v1/ws":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {path} is undocumented"
    post = spec["paths"]["/v1/conversations/{cid}/messages"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]
    assert "application/problem+json" in post["responses"]["422"]["content"]
    schemas: dict[str, Any] = spec["components"]["schemas"]
    assert {"Message", "Conversation", "Problem"} <= {n.replace("Schema", "") for n in schemas}


def test_readyz_is_503_naming_the_worker_when_none_answers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A stack whose broker (Redis db 7) has no worker: live but not ready."""
    st = _make_stack("no-worker", f"sqlite:///{tmp_path / 'p.db'}", 7, redis_server, tmp_path)
    try:
        api = Api(st)
        assert api.get("/healthz").status_code == 200
        resp = api.get("/readyz")
        assert resp.status_code == 503
        checks = resp.get_json()["checks"]
        assert checks["database"] == "ok" and checks["redis"] == "ok"
        assert checks["worker"].startswith("error")
    finally:
        st.svc.engine.dispose()


def test_readyz_is_200_when_database_redis_and_worker_answer(api: Api, live: Stack) -> None:
    resp = api.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["checks"] == {"database": "ok", "redis": "ok", "worker": "ok"}


def test_request_id_is_echoed_and_put_in_problems(api: Api) -> None:
    resp = api.get("/v1/conversations", headers={"X-Request-ID": "req-123"})
    assert resp.headers["X-Request-ID"] == "req-123"
    assert resp.get_json()["request_id"] == "req-123"
    assert resp.content_type == "application/problem+json"
    assert api.get("/v1/nowhere", user=uid()).content_type == "application/problem+json"
