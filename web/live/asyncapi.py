"""`GET /asyncapi.json`: the AsyncAPI 3.0 document of the WebSocket `GET /v1/ws`.

Generated, not written: the frames come from the table the session and the hub use
(web/live/frames.py), their shapes from its marshmallow schemas (converted to JSON Schema by
apispec, as web/openapi.py does for the REST API), and the close codes from
web/live/protocol.py. `/openapi.json` describes REST only; a WebSocket is a channel, which
OpenAPI has no words for.

The document takes the server's point of view: `send` operations are the frames the server
sends, `receive` operations those it accepts. One channel (the socket) carries them all.
"""

from __future__ import annotations

import copy
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin, resolver
from flask import Blueprint, current_app, request
from marshmallow import Schema

from web.http import doc
from web.live.frames import CLIENT_FRAMES, SERVER_FRAMES, ClientFrame, ServerFrame
from web.live.protocol import CLOSE_ADVICE, Close

bp = Blueprint("asyncapi", __name__)

CHANNEL = "live"
ADDRESS = "/v1/ws"
STREAM_ID = {
    "type": "string",
    "pattern": r"^[0-9]+-[0-9]+$",
    "description": "a stream id (<milliseconds>-<sequence>); compare ids as pairs of numbers, "
    "not as strings. Store the last one you processed: it is what you resume from.",
}
DESCRIPTION = """\
Live events of one user: new and changed messages, reactions, read receipts, conversation
changes, typing and presence. Every frame is a JSON text frame.

**Connecting.** Send the user JWT of the REST API as `?token=`, as `Authorization: Bearer`
(non-browser clients), or as the first frame (`auth`) within `PARLEY_WS_AUTH_TIMEOUT_S`
(10 s). Browsers' pages must come from an origin listed in `PARLEY_CORS_ORIGINS` (or the
server's own): others get `403` before the upgrade.

**Where to start.** `?since=<id>` (or the `auth` frame's `since`, or a `resume` frame) replays
every durable event after that id, then continues live, with no gap and no duplicate. Without
`since` the socket gets exactly the events after its connection: the position is fixed before
the handshake completes. An id the stream can no longer serve gets `resync`.

**Durable events** (`x-parley-durable: true`) carry the stream `id`; ephemeral ones (typing,
presence, resync, error, pong) do not. The close codes are listed in `x-parley-close-codes`:
reconnect with exponential backoff and jitter, always with `since`, except after 4401 and 1009.
Details: docs/websocket.md."""


def build_asyncapi() -> dict[str, Any]:
    """The document, without `servers` (they depend on the request's host)."""
    schemas = _json_schemas()
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for sf in SERVER_FRAMES.values():
        messages[sf.name] = _server_message(sf)
        operations[_operation_id("send", sf.name)] = _operation("send", sf.name, sf.summary)
    for cf in CLIENT_FRAMES.values():
        key = _client_key(cf)
        component = schemas[_schema_name(cf.schema)]
        component["properties"] = {"type": {"const": cf.name}, **component.get("properties", {})}
        component["required"] = ["type", *component.get("required", [])]
        messages[key] = {
            "name": cf.name,
            "title": f"{cf.name} (client)",
            "summary": cf.summary,
            "contentType": "application/json",
            "payload": _ref("schemas", _schema_name(cf.schema)),
        }
        op = _operation("receive", key, cf.summary)
        if cf.reply is not None:
            op["reply"] = {
                "channel": {"$ref": f"#/channels/{CHANNEL}"},
                "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{cf.reply}"}],
            }
        operations[_operation_id("receive", cf.name)] = op
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parley live events",
            "version": "1.0.0",
            "description": "The WebSocket of Parley. The REST API is described by /openapi.json.",
        },
        "defaultContentType": "application/json",
        "channels": {
            CHANNEL: {
                "address": ADDRESS,
                "title": "Live events",
                "summary": "One user's events as they happen, and the frames a client may send.",
                "description": DESCRIPTION,
                "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in messages},
                "bindings": {"ws": _binding()},
                "x-parley-close-codes": {str(int(c)): CLOSE_ADVICE[c] for c in Close},
            }
        },
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": {
                "token": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "a user JWT (an API key is refused: live events are per user)",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a user JWT in Authorization (clients that can set headers)",
                },
            },
        },
    }


def _json_schemas() -> dict[str, Any]:
    """JSON Schema of every frame's marshmallow schema, and of the schemas they nest."""
    spec = APISpec(
        title="frames", version="1", openapi_version="3.1.0", plugins=[MarshmallowPlugin()]
    )
    done: set[str] = set()
    wanted: list[type[Schema]] = [f.data for f in SERVER_FRAMES.values() if f.data is not None]
    wanted += [f.schema for f in CLIENT_FRAMES.values()]
    for schema in wanted:
        name = _schema_name(schema)
        if name not in done:
            spec.components.schema(name, schema=schema)
            done.add(name)
    found: dict[str, Any] = spec.to_dict()["components"]["schemas"]
    return found


def _server_message(frame: ServerFrame) -> dict[str, Any]:
    properties: dict[str, Any] = {"type": {"const": frame.name}}
    required = ["type"]
    if frame.durable:
        properties["id"] = STREAM_ID
        required.append("id")
    if frame.data is not None:
        properties["data"] = _ref("schemas", _schema_name(frame.data))
        required.append("data")
    return {
        "name": frame.name,
        "title": frame.name,
        "summary": frame.summary,
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        },
        "x-parley-durable": frame.durable,
    }


def _binding() -> dict[str, Any]:
    """The upgrade request (WebSockets channel binding 0.1.0)."""
    return {
        "method": "GET",
        "query": {
            "type": "object",
            "properties": {
                "token": {"type": "string", "description": "a user JWT"},
                "since": {**STREAM_ID, "description": "replay the events after this id"},
            },
        },
        "headers": {
            "type": "object",
            "properties": {
                "Authorization": {"type": "string", "description": "Bearer <user JWT>"},
                "Origin": {
                    "type": "string",
                    "description": "sent by browsers: must be listed in PARLEY_CORS_ORIGINS "
                    "(or be the server's own), else 403 before the upgrade",
                },
            },
        },
        "bindingVersion": "0.1.0",
    }


def _operation(action: str, message_key: str, summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{message_key}"}],
    }


def _operation_id(action: str, frame: str) -> str:
    return f"{action}_{frame.replace('.', '_')}"


def _client_key(frame: ClientFrame) -> str:
    """Client and server frames share one channel's messages: `typing` is both."""
    return f"client.{frame.name}" if frame.name in SERVER_FRAMES else frame.name


def _schema_name(schema: type[Schema]) -> str:
    return resolver(schema)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


@bp.get("/asyncapi.json")
@doc("The AsyncAPI 3.0 document of the WebSocket GET /v1/ws", auth=False, tag="live")
def asyncapi_json() -> dict[str, Any]:
    """Describe the live-event WebSocket: every frame either side sends, with its schema."""
    cached: dict[str, Any] | None = current_app.extensions.get("parley_asyncapi")
    if cached is None:
        cached = current_app.extensions["parley_asyncapi"] = build_asyncapi()
    document = copy.copy(cached)  # servers differ per host; the rest is shared
    secure = request.scheme == "https"
    document["servers"] = {
        "this": {
            "host": request.host,
            "protocol": "wss" if secure else "ws",
            "description": "the server that answered this request",
            "security": [
                {"$ref": "#/components/securitySchemes/token"},
                {"$ref": "#/components/securitySchemes/bearer"},
            ],
        }
    }
    return document
