"""Metrics (#10): the web's /metrics counts HTTP latency by endpoint, method and status class,
is guarded by a token when one is set, merges the samples of other processes (a dead one's live
gauges drop while its counters stay) and counts the open websockets of a real gunicorn node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from flask import Flask

from core import metrics
from tests.conftest import ROOT, Stack, wait_for
from tests.factories import ONE_DATABASE, Api, parse, scrape, uid, value


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
