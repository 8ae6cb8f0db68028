"""`GET /asyncapi.json`: the WebSocket protocol as an AsyncAPI 3.0 document.

The frame types expected here are the contract (API.md, docs/websocket.md), not read from the
code; that the frames the server really sends match the document is checked on every socket
of tests/web/live/test_ws.py (its `connect` fixture) with the checker tested below.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft7Validator

from tests.factories import Api
from tests.live_server import FrameCheck, resolve

SERVER_TYPES = {
    "message.new",
    "message.updated",
    "message.deleted",
    "reaction",
    "receipt",
    "typing",
    "presence",
    "conversation.updated",
    "attachment.ready",
    "notification",
    "resync",
    "error",
    "pong",
}
DURABLE = {
    "message.new",
    "message.updated",
    "message.deleted",
    "reaction",
    "receipt",
    "conversation.updated",
    "attachment.ready",
    "notification",
}
CLIENT_TYPES = {"auth", "resume", "typing", "read", "ping"}
COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9\.\-_]+$")  # AsyncAPI 3.0: keys of components maps


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _operations(document: dict[str, Any], action: str) -> dict[str, dict[str, Any]]:
    """Frame type → the message component of each operation with this action."""
    out: dict[str, dict[str, Any]] = {}
    for op in document["operations"].values():
        if op["action"] == action:
            for ref in op["messages"]:
                message = resolve(document, resolve(document, ref["$ref"])["$ref"])
                payload = message["payload"]
                if "$ref" in payload:
                    payload = resolve(document, payload["$ref"])
                out[payload["properties"]["type"]["const"]] = message
    return out


def test_the_document_is_asyncapi_3_and_describes_every_frame_of_the_contract(api: Api) -> None:
    resp = api.get("/asyncapi.json")
    assert resp.status_code == 200 and resp.content_type == "application/json"
    document = resp.get_json()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    server = document["servers"]["this"]
    assert server["host"] == "localhost" and server["protocol"] == "ws"
    channels = document["channels"]
    assert [c["address"] for c in channels.values()] == ["/v1/ws"]
    for ref in _refs(document):  # every reference resolves
        assert ref.startswith("#/"), ref
        resolve(document, ref)
    for kind, entries in document["components"].items():
        assert all(COMPONENT_KEY.match(k) for k in entries), (kind, list(entries))
    for name, op in document["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = op["channel"]["$ref"]
        assert resolve(document, channel) in channels.values()
        # AsyncAPI 3: an operation's messages are its channel's messages
        assert all(m["$ref"].startswith(channel + "/messages/") for m in op["messages"]), name
    sent, received = _operations(document, "send"), _operations(document, "receive")
    assert set(sent) == SERVER_TYPES
    assert set(received) == CLIENT_TYPES
    for frame_type, message in sent.items():
        required = set(message["payload"]["required"])
        assert ("id" in required) == (frame_type in DURABLE), frame_type
        assert ("data" in required) == (frame_type != "pong"), frame_type
        assert message["contentType"] == "application/json"
    for schema in document["components"]["schemas"].values():
        Draft7Validator.check_schema(schema)
    for message in document["components"]["messages"].values():
        Draft7Validator.check_schema(message["payload"])
    ping = next(
        op
        for op in document["operations"].values()
        if op["action"] == "receive" and op["messages"][0]["$ref"].endswith("/ping")
    )
    assert resolve(document, ping["reply"]["messages"][0]["$ref"]) == {
        "$ref": "#/components/messages/pong"
    }
    codes = next(iter(channels.values()))["x-parley-close-codes"]
    assert {"1001", "1009", "1011", "4001", "4002", "4008", "4401"} <= set(codes)


def test_message_frames_carry_the_rest_message_schema(api: Api) -> None:
    """message.new is documented with the very schema GET /v1/messages/{mid} has in OpenAPI."""
    document = api.get("/asyncapi.json").get_json()
    openapi = api.get("/openapi.json").get_json()
    message_data = _operations(document, "send")["message.new"]["payload"]["properties"]["data"]
    rest = openapi["paths"]["/v1/messages/{mid}"]["get"]["responses"]["200"]["content"]
    rest_ref = rest["application/json"]["schema"]["$ref"]
    name = message_data["$ref"].rsplit("/", 1)[-1]
    assert rest_ref.rsplit("/", 1)[-1] == name
    assert document["components"]["schemas"][name] == openapi["components"]["schemas"][name]


def test_the_frame_check_refuses_undescribed_and_misshapen_frames(api: Api) -> None:
    """The check test_ws.py applies to every frame received: it passes described frames and
    fails the others, so a frame the document does not describe cannot go unnoticed."""
    check = FrameCheck(api.get("/asyncapi.json").get_json())
    typing = {"conversation_id": "c1", "user_id": "u1", "expires_in": 6.0}
    assert check.problems({"type": "typing", "data": typing}) == []
    assert check.problems({"type": "pong"}) == []
    deleted = {"conversation_id": "c1", "message_id": "m1", "seq": 3}
    assert check.problems({"type": "message.deleted", "id": "17-0", "data": deleted}) == []
    assert check.problems({"type": "message.exploded", "data": {}})  # not described
    assert check.problems({"type": "message.deleted", "data": deleted})  # durable: needs an id
    assert check.problems({"type": "typing", "id": "17-0", "data": typing})  # ephemeral: none
    assert check.problems({"type": "typing", "data": {**typing, "expires_in": "soon"}})
    assert check.problems({"type": "presence", "data": {"user_id": "u1", "status": "away"}})
    assert check.problems({"type": "error", "data": {"detail": "x", "extra": 1}})
    assert check.problems({"type": "pong", "data": {}})


def test_openapi_points_to_the_asyncapi_document_and_leaves_the_socket_to_it(api: Api) -> None:
    paths = api.get("/openapi.json").get_json()["paths"]
    assert "get" in paths["/asyncapi.json"]
    assert "/v1/ws" not in paths
