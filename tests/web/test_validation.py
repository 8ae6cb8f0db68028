"""Every endpoint that takes input answers bad input with a 422 problem and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
import pytest
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from core.ids import utcnow
from domain.pagination import encode_cursor
from models import (
    Attachment,
    AuditEntry,
    Conversation,
    Message,
    MessageEdit,
    Outbox,
    Participant,
    Reaction,
    Report,
    User,
)
from tests.conftest import JWT_SECRET, Stack
from tests.factories import Api, uid

CASES = [  # (method, path template, body or query, field named in the errors)
    ("POST", "/v1/conversations", {"type": "chat", "members": ["x"]}, "type"),
    ("POST", "/v1/conversations", {"type": "group"}, "members"),
    ("POST", "/v1/conversations", {"type": "group", "members": [""]}, "members.0"),
    (
        "POST",
        "/v1/conversations",
        {"type": "group", "members": ["x"], "context": {"id": "1"}},
        "context.type",
    ),
    ("PATCH", "/v1/conversations/{cid}", {}, "_body"),
    ("PATCH", "/v1/conversations/{cid}", {"status": "deleted"}, "status"),
    ("POST", "/v1/conversations/{cid}/members", {"user_ids": []}, "user_ids"),
    ("POST", "/v1/conversations/{cid}/members", {"user_ids": ["x"], "role": "king"}, "role"),
    ("PATCH", "/v1/conversations/{cid}/members/{peer}", {"role": "god"}, "role"),
    ("PATCH", "/v1/conversations/{cid}/me", {"notification_level": "loud"}, "notification_level"),
    ("PATCH", "/v1/conversations/{cid}/me", {"muted_until": "tomorrow"}, "muted_until"),
    ("POST", "/v1/conversations/{cid}/read", {"seq": -1}, "seq"),
    ("POST", "/v1/conversations/{cid}/read", {}, "seq"),
    ("PATCH", "/v1/messages/{mid}", {"text": "ok", "pinned": True}, "pinned"),
    ("PATCH", "/v1/messages/{mid}", {}, "text"),
    ("POST", "/v1/messages/{mid}/reports", {"reason": "spam", "note": "x" * 1001}, "note"),
    ("GET", "/v1/conversations/{cid}/messages?after_seq=-3", None, "after_seq"),
    ("GET", "/v1/conversations/{cid}/messages?since=yesterday", None, "since"),
    ("GET", "/v1/conversations?limit=0", None, "limit"),
    ("GET", "/v1/conversations?unread_only=maybe", None, "unread_only"),
]


def _footprint(stack: Stack) -> tuple[int, ...]:
    with stack.svc.ReadSession() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m)) or 0
            for m in (
                Message,
                MessageEdit,
                Outbox,
                Participant,
                Reaction,
                Report,
                AuditEntry,
                Conversation,
                Attachment,
                User,
            )
        )


@pytest.mark.parametrize(("method", "path", "body", "field"), CASES)
def test_bad_input_is_a_422_problem_naming_the_field_and_changes_nothing(
    api: Api, idle: Stack, method: str, path: str, body: Any, field: str
) -> None:
    """(The worker is paused: delayed work of earlier tests must not write meanwhile.)"""
    stack = idle
    owner, peer = uid(), uid()
    cid = api.conversation(owner, peer)
    mid = api.send(owner, cid, "hello")["id"]
    before = _footprint(stack)
    url = path.format(cid=cid, mid=mid, peer=peer)
    kwargs = {"json": body} if body is not None else {}
    resp = api.call(method, url, user=owner, **kwargs)
    assert resp.status_code == 422, resp.get_json()
    problem = resp.get_json()
    assert resp.content_type == "application/problem+json"
    assert {"type", "title", "status", "detail", "errors"} <= set(problem)
    assert field in problem["errors"], problem["errors"]
    assert _footprint(stack) == before


# --- text no database can store ---------------------------------------------------------------
#
# PostgreSQL refuses NUL in text and JSON, and neither database (nor the sealing of message
# text) can store an unpaired surrogate: each would be a 500 at the INSERT. Every kind of text
# input is checked in one place (web/http.py) and answered with a problem before any query.
# Ids (path, query, form fields, the bearer token) also refuse other control characters;
# free text in JSON keeps them (tabs, newlines).

BOUNDARY = "parley-validation-boundary"


@dataclass
class Scene:
    api: Api
    owner: str
    cid: str
    key: str


def _json_text(sc: Scene, v: str) -> TestResponse:
    body = {"text": f"hi{v}"}
    return sc.api.post(f"/v1/conversations/{sc.cid}/messages", user=sc.owner, json=body)


def _json_nested(sc: Scene, v: str) -> TestResponse:
    body = {"text": "hi", "metadata": {"tags": ["a", {"b": f"c{v}"}]}}
    return sc.api.post(f"/v1/conversations/{sc.cid}/messages", user=sc.owner, json=body)


def _json_key(sc: Scene, v: str) -> TestResponse:
    body = {"text": "hi", "metadata": {f"k{v}": 1}}
    return sc.api.post(f"/v1/conversations/{sc.cid}/messages", user=sc.owner, json=body)


def _json_raw(sc: Scene, v: str) -> TestResponse:
    """The body as the client wrote it: a JSON escape such as \\ud800 decodes to a lone half."""
    body = '{"text": "hi' + v + '"}'
    return sc.api.post(
        f"/v1/conversations/{sc.cid}/messages",
        user=sc.owner,
        data=body.encode(),
        content_type="application/json",
    )


def _query(sc: Scene, v: str) -> TestResponse:
    return sc.api.get(f"/v1/conversations/{sc.cid}/messages?sender_id={sc.owner}{v}", user=sc.owner)


def _raw_query(sc: Scene, v: str) -> TestResponse:
    """Bytes in the query string as they came off the wire (WSGI: one char per byte)."""
    raw = {"QUERY_STRING": f"sender_id={sc.owner}{v}"}
    url = f"/v1/conversations/{sc.cid}/messages"
    return sc.api.get(url, user=sc.owner, environ_overrides=raw)


def _cursor(sc: Scene, v: str) -> TestResponse:
    """Text inside a cursor (base64 JSON): well-formed and well-typed, but forged."""
    cursor = encode_cursor({"t": "2026-01-01T00:00:00+00:00", "id": f"a{v}"})
    return sc.api.get("/v1/conversations", user=sc.owner, query_string={"cursor": cursor})


def _path(sc: Scene, v: str) -> TestResponse:
    url = f"/v1/conversations/{sc.cid}{v}/messages"
    return sc.api.post(url, user=sc.owner, json={"text": "hi"})


def _raw_path(sc: Scene, v: str) -> TestResponse:
    """Bytes in the path as a server hands them over (the test client would replace them)."""
    url = f"/v1/conversations/{sc.cid}/messages"
    raw = {"PATH_INFO": f"/v1/conversations/{sc.cid}{v}/messages"}
    return sc.api.post(url, user=sc.owner, json={"text": "hi"}, environ_overrides=raw)


def _form(sc: Scene, v: str) -> TestResponse:
    """A multipart upload whose conversation_id carries `v` (latin-1: one char per byte)."""
    field = b'Content-Disposition: form-data; name="conversation_id"'
    file = (
        b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nContent-Type: text/plain'
    )
    parts = [(field, sc.cid.encode() + v.encode("latin-1")), (file, b"hello, world\n")]
    body = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n"
        for head, value in parts
    )
    body += b"--" + BOUNDARY.encode() + b"--\r\n"
    return sc.api.post(
        "/v1/attachments",
        user=sc.owner,
        data=body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
    )


def _header(sc: Scene, v: str) -> TestResponse:
    """An API key whose prefix (looked up in the database) carries `v`."""
    key = sc.key[:3] + v + sc.key[3:]
    return sc.api.get(f"/v1/conversations/{sc.cid}", headers={"Authorization": f"Bearer {key}"})


JSON_BAD = {"NUL": "\x00", "lone high surrogate": "\ud800", "lone low surrogate": "\udfff"}
URL_BAD = {"NUL": "%00", "control character": "%01", "DEL": "%7F"}
URL_NOT_UTF8 = {"invalid UTF-8": "%FF", "UTF-8 of a surrogate": "%ED%A0%80"}
RAW_BAD = {"NUL": "\x00", "control character": "\x1f"}
RAW_NOT_UTF8 = {"invalid UTF-8": "\xff", "UTF-8 of a surrogate": "\xed\xa0\x80"}
RAW_ANY = {**RAW_BAD, **RAW_NOT_UTF8}
HEADER_BAD = {"NUL": "\x00", "control character": "\x01"}
# (input kind, request, bad value, status, field named in `errors`, what is bad)
TEXT_CASES = [
    *[("json string", _json_text, v, 422, "text", n) for n, v in JSON_BAD.items()],
    *[("json nested", _json_nested, v, 422, "metadata.tags.1.b", n) for n, v in JSON_BAD.items()],
    *[("json key", _json_key, v, 422, "metadata", n) for n, v in JSON_BAD.items()],
    ("json escape", _json_raw, "\\u0000", 422, "text", "NUL"),
    ("json escape", _json_raw, "\\ud83d", 422, "text", "lone surrogate"),
    *[("query", _query, v, 400, "sender_id", n) for n, v in {**URL_BAD, **URL_NOT_UTF8}.items()],
    *[("raw query", _raw_query, v, 400, "sender_id", n) for n, v in RAW_ANY.items()],
    *[("cursor", _cursor, v, 422, "cursor", n) for n, v in JSON_BAD.items()],
    *[("path", _path, v, 400, "cid", n) for n, v in URL_BAD.items()],
    *[("raw path", _raw_path, v, 400, "_path", n) for n, v in RAW_NOT_UTF8.items()],
    *[("form field", _form, v, 422, "conversation_id", n) for n, v in RAW_ANY.items()],
    *[("header", _header, v, 400, "Authorization", n) for n, v in HEADER_BAD.items()],
]  # fmt: skip


def _scene(api: Api) -> Scene:
    owner = uid()
    cid = api.conversation(owner, uid())
    api.send(owner, cid, "hello")
    return Scene(api, owner, cid, api.api_key("validation"))


@pytest.mark.parametrize(
    ("kind", "send", "bad", "status", "field"),
    [pytest.param(*c[:5], id=f"{c[0]}: {c[5]}") for c in TEXT_CASES],
)
def test_text_no_database_can_store_is_a_4xx_problem_and_changes_nothing(
    api: Api,
    idle: Stack,
    kind: str,
    send: Callable[[Scene, str], TestResponse],
    bad: str,
    status: int,
    field: str,
) -> None:
    """NUL, unpaired surrogates, bytes that are not UTF-8 and (in ids) control characters, in
    each kind of input: a problem naming the input, nothing written, on both databases. The
    same request without the bad text is accepted, so the refusal is the text's doing."""
    sc = _scene(api)
    before = _footprint(idle)
    resp = send(sc, bad)
    assert resp.status_code == status, (kind, resp.status_code, resp.get_data(as_text=True))
    assert resp.content_type == "application/problem+json"
    problem = resp.get_json()
    assert problem["status"] == status and problem["detail"]
    assert field in problem.get("errors", {}), problem
    assert _footprint(idle) == before
    assert send(sc, "").status_code < 300


def test_free_text_keeps_tabs_newlines_and_other_control_characters(api: Api) -> None:
    """Only ids refuse control characters: a message may hold a tab, a newline or an ESC."""
    owner = uid()
    cid = api.conversation(owner, uid())
    text = "line one\n\tline two\r\n\x1b[1mbold?\x1b[0m"
    sent = api.send(owner, cid, text, metadata={"note\t1": "a\nb"})
    assert sent["text"] == text


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", "u\x00nul"),
        ("sub", "u\ud800half"),
        ("sub", "u\x07bell"),
        ("name", "A\x00"),
        ("roles", ["r\x00"]),
    ],
)
def test_a_signed_token_with_text_no_database_can_store_is_401_and_adds_no_user(
    api: Api, idle: Stack, claim: str, value: Any
) -> None:
    """Claims are input too: the platform signs them, and `sub`, `name` and `roles` are stored."""
    claims = {"sub": uid(), "exp": utcnow() + timedelta(minutes=5), claim: value}
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    before = _footprint(idle)
    resp = api.get("/v1/conversations", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    assert claim in resp.get_json()["detail"]
    assert _footprint(idle) == before
