"""Operations (#10): metrics, logs, rate limits, edge security, JWT claims, status, shutdown.

Real services as everywhere: the Celery worker is a subprocess writing its samples into the
shared metrics directory; rate limits count in the suite's Redis. Apps with other settings
(tight limits, CORS, a metrics token) share the stack's database and Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import jwt
import pytest
from flask import Flask

from core import metrics
from core.ids import utcnow
from tests.conftest import JWT_SECRET, ROOT, Stack, wait_for
from tests.factories import Api, Samples, delivered_ids, parse, scrape, uid, value, wait_delivered

# Edge behaviour (HTTP, counters in Redis, tokens, logging) does not depend on the database, so
# those tests run on SQLite only; what touches delivery and the outbox runs on both.
ONE_DATABASE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)


@pytest.fixture
def make_app(stack: Stack) -> Iterator[Callable[..., Flask]]:
    """An app on the stack's database and Redis with other settings."""
    from web import create_app

    made: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        s = stack.svc.settings
        app = create_app(
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
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["parley"].engine.dispose()


def api_for(stack: Stack, app: Flask) -> Api:
    api = Api(stack)
    api.client = app.test_client()
    return api


def an_ip() -> dict[str, Any]:
    """A client address of its own, so counters in the shared Redis never meet another test's."""
    raw = uuid.uuid4().bytes
    return {"environ_base": {"REMOTE_ADDR": f"10.{raw[0]}.{raw[1]}.{raw[2]}"}}


# --- metrics --------------------------------------------------------------------------------------


@ONE_DATABASE
def test_http_latency_is_recorded_by_endpoint_method_and_status_class(api: Api) -> None:
    before = scrape(api)
    key = {"endpoint": "health.healthz", "method": "GET", "status": "2xx"}
    for _ in range(3):
        api.get("/healthz")
    api.get("/v1/conversations")  # no token: 401
    after = scrape(api)
    name = "parley_http_request_duration_seconds_count"
    assert value(after, name, **key) - value(before, name, **key) >= 3
    assert value(after, name, endpoint="conversations.list_conversations", status="4xx") >= 1
    assert value(after, "parley_http_request_duration_seconds_bucket", **key, le="+Inf") >= 3


@ONE_DATABASE
def test_metrics_token_guards_the_endpoint_when_set(
    stack: Stack, make_app: Callable[..., Flask]
) -> None:
    client = make_app(metrics_token="scrape-me-0123456789").test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.content_type == "application/problem+json"
    wrong = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456788"})
    assert wrong.status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
    assert ok.status_code == 200 and b"parley_http_request_duration_seconds" in ok.data


@ONE_DATABASE
def test_a_dead_process_leaves_live_gauges_but_its_counters_stay(api: Api) -> None:
    """Multiprocess mode: another process's samples are merged; marking it dead drops its open
    sockets gauge (live) while its counters keep counting toward the totals."""
    script = (
        "from core import metrics\n"
        "metrics.ws_connections.inc(2)\n"
        "metrics.push_result('webhook', 'ok-from-child')\n"
        "import os; print(os.getpid())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    pid = int(out.stdout.strip())
    before = scrape(api)
    assert value(before, "parley_push_results_total", outcome="ok-from-child") >= 1
    mine = metrics.ws_connections._value.get()  # this process's own open sockets (normally 0)
    assert value(before, "parley_ws_connections") >= 2 + mine
    metrics.mark_dead(pid)
    after = scrape(api)
    assert value(after, "parley_ws_connections") == value(before, "parley_ws_connections") - 2
    assert value(after, "parley_push_results_total", outcome="ok-from-child") >= 1


@ONE_DATABASE
def test_open_websockets_are_counted_by_the_hub(stack: Stack, api: Api) -> None:
    """A real gunicorn node: its /metrics counts the socket while it is open."""
    from tests.live_server import LiveClient, running_node

    user = uid()
    token = api.token(user)
    with running_node(stack, "metrics") as node:

        def sockets() -> float:
            import http.client

            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
            conn.request("GET", "/metrics")
            body = conn.getresponse().read().decode()
            conn.close()
            return value(parse(body), "parley_ws_connections")

        base = sockets()
        client = LiveClient.connect(node.ws_url(token=token))
        try:
            wait_for(lambda: sockets() == base + 1, 10, 0.1, "the socket to be counted")
        finally:
            client.close()
        wait_for(lambda: sockets() == base, 10, 0.1, "the socket to be uncounted")


# --- rate limits ----------------------------------------------------------------------------------


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


# --- edge security --------------------------------------------------------------------------------


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


# --- JWT claims -----------------------------------------------------------------------------------


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


# --- shutdown settings ----------------------------------------------------------------------------


@ONE_DATABASE
def test_worker_and_web_shutdown_settings(stack: Stack) -> None:
    conf = stack.svc.tasks.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert conf.worker_prefetch_multiplier == 1
    procfile = (ROOT / "Procfile").read_text()
    assert "--graceful-timeout" in procfile
    import runpy

    gconf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert "%(U)s" in gconf["access_log_format"] and "%(r)s" not in gconf["access_log_format"]
    assert callable(gconf["child_exit"])


# --- work waiting for a worker (both databases; no worker running) --------------------------------


def test_queue_depth_lag_and_outbox_backlog_show_work_waiting_for_a_worker(
    api: Api, idle: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    for i in range(3):
        api.send(a, cid, f"waiting {i}")
    time.sleep(0.3)
    got = scrape(api)
    assert value(got, "parley_queue_depth", queue="pipeline") >= 3
    assert value(got, "parley_queue_lag_seconds", queue="pipeline") >= 0.3
    assert value(got, "parley_outbox_backlog") >= 3
    assert value(got, "parley_outbox_oldest_age_seconds") >= 0.3
    assert value(got, "parley_broker_up") == 1
    assert ("parley_queue_depth", frozenset({("queue", "media")})) in got


def test_status_exits_1_when_no_worker_answers(idle: Stack) -> None:
    result = idle.app.test_cli_runner().invoke(args=["status"])
    assert result.exit_code == 1
    assert "none answered" in result.output and "DEGRADED" in result.output


def test_sigterm_to_a_worker_mid_batch_then_a_restart_delivers_every_message_once(
    api: Api, idle: Stack
) -> None:
    """SIGTERM the worker's process group (as honcho and systemd do) while it works through a
    batch: the warm shutdown finishes or requeues what it holds, and after a restart every
    message reaches every member exactly once, in order."""
    a, b = uid(), uid()
    cids = [api.conversation(a, b) for _ in range(4)]  # message i goes to cids[i % 4]
    ids: list[str] = []
    for i in range(48):
        ids.append(api.send(a, cids[i % 4], f"batch {i}")["id"])
    log = idle.data_dir / f"sigterm-{uuid.uuid4().hex[:6]}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO",
             "-Q", "pipeline,media,push,maintenance", "--concurrency", "2",
             "--hostname", f"sigterm-{uuid.uuid4().hex[:6]}@%h",
             "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=idle.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: len(delivered_ids(idle, b)) >= 3, 60, 0.02, "the batch to start")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        assert "WorkerLostError" not in log.read_text(), "a pool child died mid-task"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    at_stop = len(delivered_ids(idle, b))
    assert at_stop < len(ids), "the batch finished before the SIGTERM: nothing was tested"
    idle.worker.start(idle.app)
    for user in (a, b):
        wait_delivered(idle, user, ids, timeout=120)
    for user in (a, b):
        got = delivered_ids(idle, user)
        assert Counter(got) == Counter(ids), f"{user}: duplicates or losses"
        for k in range(4):
            posted = ids[k::4]  # one conversation's messages, in seq order
            wanted = set(posted)
            assert [m for m in got if m in wanted] == posted, f"{user}: out of seq order"


# --- with a worker (both databases) ---------------------------------------------------------------


def test_pipeline_stages_moderation_and_queue_wait_reach_metrics_from_the_worker(
    api: Api, live: Stack
) -> None:
    """Samples written by the Celery worker's processes appear in the web's /metrics."""
    a, b = uid(), uid()
    cid = api.conversation(a, b, ctype="direct")
    before = scrape(api)
    mids = [api.send(a, cid, "call me at five five five one two three four")["id"]]
    mids.append(api.send(a, cid, "plain hello")["id"])
    wait_delivered(live, b, mids)
    stage = "tasks.moderate.moderate_message"

    def counted() -> Samples | None:
        now = scrape(api)
        done = value(now, "parley_tasks_total", task=stage, outcome="success")
        return now if done - value(before, "parley_tasks_total", task=stage) >= 2 else None

    after = wait_for(counted, 15, 0.1, "the worker's task counters")
    assert value(after, "parley_task_duration_seconds_count", task=stage) >= 2
    assert value(after, "parley_task_queue_wait_seconds_count", queue="pipeline") >= 2
    verdicts = "parley_moderation_verdicts_total"
    assert value(after, verdicts, action="mask", label="phone") > value(
        before, verdicts, action="mask", label="phone"
    )
    assert value(after, verdicts, action="allow", label="none") > value(
        before, verdicts, action="allow", label="none"
    )


def test_status_shows_queues_outbox_workers_and_reachability(live: Stack) -> None:
    runner = live.app.test_cli_runner()
    result = runner.invoke(args=["status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["database"] == "ok" and report["redis"] == "ok" and report["ok"] is True
    assert set(report["broker"]["queues"]) == {"pipeline", "media", "push", "maintenance"}
    assert all(q["depth"] is not None for q in report["broker"]["queues"].values())
    assert report["outbox"]["backlog"] is not None
    assert any(name.startswith("test-") for name in report["workers"]["answered"])
    assert "dead_letters" in report
    text = runner.invoke(args=["status"])
    assert text.exit_code == 0
    for word in ("database", "redis", "pipeline", "outbox", "workers", "dead letters"):
        assert word in text.output
    assert "status        ok" in text.output


@ONE_DATABASE
def test_logs_carry_request_ids_and_callers_but_no_message_text_or_secrets(
    api: Api, live: Stack, capfd: pytest.CaptureFixture[str]
) -> None:
    """Post a canary text with a token and an API key: neither web nor worker logs them."""
    a, b = uid(), uid()
    canary = "canary-" + uuid.uuid4().hex
    cid = api.conversation(a, b)
    rid = "ops-" + uid("r")
    resp = api.post(
        f"/v1/conversations/{cid}/messages",
        user=a,
        json={"text": f"{canary} my mail is x@example.com"},
        headers={"X-Request-ID": rid},
    )
    mid = resp.get_json()["id"]
    api.patch(f"/v1/messages/{mid}", user=a, json={"text": f"{canary} edited"})
    key = api.api_key("ops-canary")
    api.get("/v1/conversations", key=key)
    api.get("/v1/conversations", headers={"Authorization": "Bearer not-a-valid-token"})
    wait_delivered(live, b, [mid])
    wait_for(lambda: rid in live.worker.log(), 15, what="the worker's lines for the request")
    web_log = capfd.readouterr().err
    worker_log = live.worker.log()
    token = api.token(a)
    for where, text in (("web", web_log), ("worker", worker_log)):
        assert canary not in text, f"message text in the {where} log"
        assert token not in text and token.split(".")[2] not in text, f"a JWT in the {where} log"
        assert key not in text and key.split("_")[-1] not in text, f"an API key in the {where} log"
        assert "not-a-valid-token" not in text
    access = [line for line in web_log.splitlines() if f"/v1/conversations/{cid}/messages" in line]
    assert any(rid in line and a in line and "duration_ms=" in line for line in access), access
