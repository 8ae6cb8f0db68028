"""Request parsing, the text every input must be, and the per-view OpenAPI annotations views
declare with `@doc`.

The text rules every input follows, so that no text reaches SQL that a database refuses:

- No input may hold NUL (PostgreSQL refuses it in text and JSON) or an unpaired surrogate
  (U+D800-U+DFFF: not Unicode text, so it cannot be encoded as UTF-8 for either database or
  for sealing). Bytes that are not UTF-8 (in the URL, a form field) are refused too, rather
  than silently replaced with U+FFFD.
- Ids and tokens (path parameters, query parameters, multipart form fields, the bearer token)
  also refuse every other control character (Unicode category Cc: U+0001-U+001F, U+007F-U+009F):
  none of them is ever part of a name, and they would only make look-alikes of real ids.
- Free text (JSON bodies: message text, subjects, notes, metadata keys and values) keeps the
  other control characters: tabs and newlines are text, and what a client renders is its call.

Where: `install` registers the before-request check of the URL (path and query, the raw bytes
included) and the Authorization header, which runs before authentication and every view: a 400
problem naming the parameter. `json_body` checks every string and key of the parsed JSON before
the view's first query: a 422 naming the field. `form_field` decodes a multipart field
(web/attachments.py) before its early conversation check: a 422 naming it. Text carried inside
other input follows the same rules where it is opened: signed token claims (web/auth.py, with
these functions: 401) and cursors (domain/pagination.py: forged text is an invalid cursor, 422).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from flask import Flask, request
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import BadRequest, UnsupportedMediaType
from werkzeug.wrappers import Response

from domain.errors import DomainError, Invalid

F = TypeVar("F", bound=Callable[..., Any])

NUL = "must not contain NUL characters"
SURROGATE = "must be Unicode text (it holds an unpaired surrogate, U+D800-U+DFFF)"
CONTROL = "must not contain control characters"
NOT_UTF8 = "must be UTF-8 text"
_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def doc(
    summary: str,
    *,
    body: type[Schema] | None = None,
    form: type[Schema] | None = None,
    query: type[Schema] | None = None,
    path: dict[str, str] | None = None,
    responses: dict[int, type[Schema] | None] | None = None,
    auth: bool = True,
    tag: str | None = None,
) -> Callable[[F], F]:
    """Describe a view for web/openapi.py (`body`: a JSON body; `form`: a multipart/form-data
    one; `path`: descriptions of path parameters, by name), and shape its answers: the JSON
    body a view returns is dumped through the schema `responses` documents for its status
    (`respond`), so the documented shape is the one sent."""
    documented = responses or {200: None}
    dumpers = {status: schema() for status, schema in documented.items() if schema is not None}

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def view(*args: Any, **kwargs: Any) -> Any:
            return respond(dumpers, documented, fn(*args, **kwargs))

        view._apidoc = {  # type: ignore[attr-defined]
            "summary": summary,
            "body": body,
            "form": form,
            "query": query,
            "path": path or {},
            "responses": documented,
            "auth": auth,
            "tag": tag,
            "description": (fn.__doc__ or "").strip(),
        }
        return view  # type: ignore[return-value]

    return wrap


def respond(
    dumpers: Mapping[int, Schema], documented: Mapping[int, type[Schema] | None], result: Any
) -> Any:
    """A view's result with its JSON body dumped through the schema documented for its status.

    A `Response` (a download, a 204, a problem) passes as it is, and so does a body whose
    status is documented without a schema (a document of its own kind, such as
    /asyncapi.json). A status that `@doc` does not list is a bug in the view: it raises."""
    if isinstance(result, Response):
        return result
    body, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    status = rest[0] if rest else 200
    if status not in documented:
        raise TypeError(f"the view answered {status}, which its @doc does not list")
    dumper = dumpers.get(status)
    if dumper is None:
        return result
    return (dumper.dump(body), *rest) if rest else dumper.dump(body)


# --- text ---------------------------------------------------------------------------------------


def text_fault(value: str, *, ident: bool = False) -> str | None:
    """Why `value` cannot be taken, or None. `ident`: an id or token (no control characters)."""
    if "\x00" in value:
        return NUL
    if _SURROGATES.search(value):
        return SURROGATE
    if ident and _CONTROLS.search(value):
        return CONTROL
    return None


def json_faults(data: Any, path: str = "") -> dict[str, list[str]]:
    """{field path: [why]} for every string and key of parsed JSON that cannot be taken. A bad
    key is named by the object holding it (`metadata`), so no error name echoes it."""
    if isinstance(data, str):
        why = text_fault(data)
        return {path or "_body": [why]} if why else {}
    found: dict[str, list[str]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            why = text_fault(str(key))
            if why:
                reasons = found.setdefault(path or "_body", [])
                if f"keys {why}" not in reasons:
                    reasons.append(f"keys {why}")
                continue
            found.update(json_faults(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found.update(json_faults(value, f"{path}.{i}" if path else str(i)))
    return found


def form_field(name: str, raw: bytes) -> str:
    """A multipart form field's text (fields are ids): strict UTF-8, trimmed of the spaces and
    line ends a shell or encoder may add, no control characters; otherwise a 422 naming it."""
    try:
        text = raw.decode("utf-8").strip(" \t\r\n")
    except UnicodeDecodeError:
        why: str | None = NOT_UTF8
    else:
        why = text_fault(text, ident=True)
    if why:
        raise Invalid(f"form field {name!r} {why}", {name: [why]})
    return text


def _utf8(raw: bytes | None) -> str | None:
    try:
        return raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        return None


def _wsgi_bytes(key: str) -> bytes | None:
    """An environ string as the bytes the server received (PEP 3333: one char per byte)."""
    try:
        return str(request.environ.get(key, "")).encode("latin-1")
    except UnicodeEncodeError:
        return None


def _path_faults() -> dict[str, list[str]]:
    if _utf8(_wsgi_bytes("PATH_INFO")) is None:  # werkzeug would replace the bytes with U+FFFD
        return {"_path": [NOT_UTF8]}
    found: dict[str, list[str]] = {}
    for name, value in (request.view_args or {}).items():
        why = text_fault(value, ident=True) if isinstance(value, str) else None
        if why:
            found[name] = [why]
    why = None if found else text_fault(request.path, ident=True)
    return {"_path": [why]} if why else found  # the path of no route, or outside parameters


def _query_faults() -> dict[str, list[str]]:
    raw = _wsgi_bytes("QUERY_STRING")
    if raw is None:
        return {"_query": [NOT_UTF8]}
    found: dict[str, list[str]] = {}
    for pair in raw.split(b"&"):  # as werkzeug splits it (its decoding would replace bytes)
        raw_key, _, raw_value = pair.partition(b"=")
        key = _utf8(unquote_to_bytes(raw_key.replace(b"+", b" ")))
        why = NOT_UTF8 if key is None else text_fault(key, ident=True)
        if key is None or why:
            found["_query"] = [f"parameter names {why}"]
            continue
        value = _utf8(unquote_to_bytes(raw_value.replace(b"+", b" ")))
        why = NOT_UTF8 if value is None else text_fault(value, ident=True)
        if why:
            found[key] = [why]
    return found


def refuse_bad_text() -> None:
    """before_request: the URL and the bearer token must be text ids can be; 400 naming them."""
    found = {**_path_faults(), **_query_faults()}
    auth = request.environ.get("HTTP_AUTHORIZATION")
    why = text_fault(str(auth), ident=True) if auth is not None else None
    if why:
        found["Authorization"] = [why]
    if found:
        detail = "; ".join(f"{name} {', '.join(whys)}" for name, whys in sorted(found.items()))
        raise DomainError(detail, found)  # the base: 400 Bad Request


def install(app: Flask) -> None:
    """Check every request's URL and token before views, authentication or rate limits run
    (register it after the request id, so the problem carries it)."""
    app.before_request(refuse_bad_text)


# --- bodies and queries -----------------------------------------------------------------------


_SCHEMAS: dict[type[Schema], Schema] = {}


def _schema(schema: Schema | type[Schema]) -> Schema:
    """One instance per schema class, built on first use: building one copies every declared
    field (~0.1 ms for a message's), and marshmallow schemas keep no state between loads."""
    if isinstance(schema, Schema):
        return schema
    found = _SCHEMAS.get(schema)
    if found is None:
        found = _SCHEMAS[schema] = schema()
    return found


def json_body(schema: Schema | type[Schema]) -> dict[str, Any]:
    """Parse and validate a JSON object body: 415 for another media type, 400 for bad JSON,
    422 for text no database can store (any string or key, at any depth) or a failed schema.
    Pass the schema's class to reuse one instance (`_schema`)."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the body is not valid JSON")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    faults = json_faults(data)
    if faults:
        raise ValidationError(faults)
    loaded: dict[str, Any] = _schema(schema).load(data)
    return loaded


def query_args(schema: Schema) -> dict[str, Any]:
    """Validate query parameters (their text was checked by `refuse_bad_text`); repeated or
    unknown parameters are errors, not ignored."""
    raw: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        raw[key] = values[0] if len(values) == 1 else values
    loaded: dict[str, Any] = schema.load(raw)
    return loaded
