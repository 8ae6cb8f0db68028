"""Origin check on WebSocket upgrades: browsers apply no CORS to WebSockets, so the server
refuses pages of origins `PARLEY_CORS_ORIGINS` does not list, before the upgrade.

Real gunicorn nodes and the real `websocket-client`, which sends the `Origin` we give it (by
default its own target's, as a page of the same site would; `suppress_origin` sends none).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from tests.conftest import Stack
from tests.factories import Api, uid
from tests.live_server import LiveClient, WebNode, start_node

pytestmark = pytest.mark.slow

LISTED = "https://app.example"


@pytest.fixture(scope="module")
def listing_node(stack: Stack) -> Iterator[WebNode]:
    n = start_node(stack, "origins", {"PARLEY_CORS_ORIGINS": f"{LISTED}, https://admin.example/"})
    yield n
    n.stop()


def _open(node: WebNode, token: str, **options: Any) -> LiveClient:
    client = LiveClient.connect(node.ws_url(token=token), **options)
    client.send({"type": "ping"})
    assert client.wait_type("pong")["type"] == "pong"
    return client


def _refused(node: WebNode, token: str, origin: str) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        LiveClient.connect(node.ws_url(token=token), origin=origin).close()
    return refused.value


def test_listed_origins_and_clients_without_one_connect(api: Api, listing_node: WebNode) -> None:
    token = api.token(uid())
    for options in (
        {"origin": LISTED},
        {"origin": "https://admin.example"},  # listed with a trailing slash
        {"suppress_origin": True},  # not a browser
        {},  # the server's own origin (http://127.0.0.1:<port>), as a same-site page sends
    ):
        _open(listing_node, token, **options).close()


def test_an_unlisted_origin_gets_403_problem_before_the_upgrade(
    api: Api, listing_node: WebNode
) -> None:
    """Even with a valid token: the page is not trusted to use it."""
    token = api.token(uid())
    for origin in ("https://evil.example", "https://app.example.evil.example", "null"):
        exc = _refused(listing_node, token, origin)
        assert exc.status_code == 403, origin
        headers = {k.lower(): v for k, v in (exc.resp_headers or {}).items()}
        assert headers["content-type"] == "application/problem+json"
        assert "upgrade" not in headers
        body = json.loads(exc.resp_body or b"{}")
        assert body["status"] == 403 and "PARLEY_CORS_ORIGINS" in body["detail"]
        assert origin in body["detail"]


def test_a_star_allows_every_origin_and_an_empty_list_only_the_servers_own(
    api: Api, stack: Stack
) -> None:
    token = api.token(uid())
    star = start_node(stack, "origins-star", {"PARLEY_CORS_ORIGINS": "*"})
    try:
        _open(star, token, origin="https://anywhere.example").close()
    finally:
        star.stop()
    plain = start_node(stack, "origins-none", {"PARLEY_CORS_ORIGINS": ""})
    try:
        assert _refused(plain, token, "https://anywhere.example").status_code == 403
        _open(plain, token).close()  # http://127.0.0.1:<its port>: the server's own
        _open(plain, token, suppress_origin=True).close()
    finally:
        plain.stop()
