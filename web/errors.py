"""Every error is RFC 9457 application/problem+json, produced here and nowhere else."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from domain.errors import DomainError

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TYPE_BASE = "https://parley.dev/problems/"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: Any = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    body.update(extra or {})
    rid = getattr(g, "request_id", None)
    if rid:
        body["request_id"] = rid
    resp = Response(json.dumps(body), status=status, mimetype=PROBLEM)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dict → {"a.b": ["msg"]}."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                name = prefix or "_body"
            out.update(_flatten(value, name))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "_body"] = list(messages)
    elif isinstance(messages, list):
        for i, m in enumerate(messages):
            out.update(_flatten(m, f"{prefix}.{i}"))
    else:
        out[prefix or "_body"] = [str(messages)]
    return out


def register(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        # extension members (e.g. `moderation` on a refused edit) sit beside `detail`
        members: dict[str, Any] = dict(exc.extra)
        return problem(exc.status, exc.title, exc.detail, errors=exc.errors, **members)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        errors = _flatten(exc.messages)
        fields = ", ".join(sorted(errors))
        return problem(422, "Unprocessable Content", f"invalid input: {fields}", errors=errors)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        retry = getattr(exc, "retry_after", None)
        if retry:
            headers["Retry-After"] = str(retry)
        return problem(status, exc.name, exc.description or exc.name, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return problem(
            500,
            "Internal Server Error",
            "the server failed to handle this request; it has been logged",
        )
