"""Request parsing and the per-view OpenAPI annotations views declare with `@doc`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import request
from marshmallow import Schema
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

F = TypeVar("F", bound=Callable[..., Any])


def doc(
    summary: str,
    *,
    body: type[Schema] | None = None,
    form: type[Schema] | None = None,
    query: type[Schema] | None = None,
    responses: dict[int, type[Schema] | None] | None = None,
    auth: bool = True,
    tag: str | None = None,
) -> Callable[[F], F]:
    """Attach what web/openapi.py needs to describe this view (`body`: a JSON body; `form`:
    a multipart/form-data one)."""

    def wrap(fn: F) -> F:
        fn._apidoc = {  # type: ignore[attr-defined]
            "summary": summary,
            "body": body,
            "form": form,
            "query": query,
            "responses": responses or {200: None},
            "auth": auth,
            "tag": tag,
            "description": (fn.__doc__ or "").strip(),
        }
        return fn

    return wrap


def json_body(schema: Schema) -> dict[str, Any]:
    """Parse and validate a JSON object body: 415 for another media type, 400 for bad JSON."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the body is not valid JSON")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    loaded: dict[str, Any] = schema.load(data)
    return loaded


def query_args(schema: Schema) -> dict[str, Any]:
    """Validate query parameters; repeated or unknown parameters are errors, not ignored."""
    raw: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        raw[key] = values[0] if len(values) == 1 else values
    loaded: dict[str, Any] = schema.load(raw)
    return loaded
