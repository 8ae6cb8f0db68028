"""Every endpoint that takes input answers bad input with a 422 problem and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from models import AuditEntry, Message, Outbox, Participant, Reaction, Report
from tests.conftest import Stack
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
            for m in (Message, Outbox, Participant, Reaction, Report, AuditEntry)
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
