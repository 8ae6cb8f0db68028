"""OpenAPI 3.1 generated from the marshmallow schemas and each view's `@doc` (web/http.py)."""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, current_app

from web.schemas.common import ProblemSchema

bp = Blueprint("openapi", __name__)

_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
ERROR_CODES = (400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500)


def build_spec(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="Parley",
        version="1.0.0",
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={
            "description": "Message delivery for platforms: conversations, messages, live "
            "events. Errors are RFC 9457 application/problem+json."
        },
    )
    spec.components.security_scheme(
        "bearer",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "A user JWT (HS256/RS256) or a server API key (pk_...)",
        },
    )
    spec.components.schema("Problem", schema=ProblemSchema)
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "_apidoc", None)
        if meta is None:
            continue
        path = _CONVERTER.sub(r"{\1}", rule.rule)
        described = meta.get("path") or {}
        params = [  # in path order: rule.arguments is a set, whose order changes per process
            {"in": "path", "name": n, "required": True, "schema": {"type": "string"}}
            | ({"description": described[n]} if n in described else {})
            for n in _CONVERTER.findall(rule.rule)
        ]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(meta, params)
    for path, ops in sorted(paths.items()):
        spec.path(path=path, operations=ops)
    return spec.to_dict()


def _operation(meta: dict[str, Any], path_params: list[dict[str, Any]]) -> dict[str, Any]:
    problem = {"application/problem+json": {"schema": "Problem"}}
    op: dict[str, Any] = {
        "summary": meta["summary"],
        "description": meta["description"],
        "parameters": list(path_params),
        "responses": {},
    }
    if meta["tag"]:
        op["tags"] = [meta["tag"]]
    if meta["query"] is not None:
        op["parameters"].append({"in": "query", "schema": meta["query"]})
    if meta["body"] is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": meta["body"]}},
        }
    if meta.get("form") is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": meta["form"]}},
        }
    for status, schema in meta["responses"].items():
        content = {"application/json": {"schema": schema}} if schema is not None else None
        op["responses"][str(status)] = {
            "description": _describe(status),
            **({"content": content} if content else {}),
        }
    for status in ERROR_CODES:
        op["responses"].setdefault(
            str(status), {"description": _describe(status), "content": problem}
        )
    op["security"] = [{"bearer": []}] if meta["auth"] else []
    return op


def _describe(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server."""
    cached: dict[str, Any] | None = current_app.extensions.get("parley_openapi")
    if cached is None:
        cached = build_spec(current_app)
        current_app.extensions["parley_openapi"] = cached
    return cached
