"""Logs (core/logs.py): every `extra=` field and the bound context reach the text and the JSON
output of the handler `configure_logging` installs, text-like fields never do; and end to end,
web and worker lines carry request ids and callers but never message text, tokens or API keys.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from core import logs
from tests.conftest import Stack, wait_for
from tests.factories import ONE_DATABASE, Api, uid, wait_delivered

# A logger under one of our packages, so it goes through the handler configure_logging installs.
log = logging.getLogger("domain.test_logs")


@pytest.fixture
def log_format() -> Iterator[Callable[[str], None]]:
    """Reconfigure logging from LOG_FORMAT as a process start does; restore it afterwards."""
    saved = os.environ.get("LOG_FORMAT")

    def configure(fmt: str) -> None:
        os.environ["LOG_FORMAT"] = fmt
        logs.configure_logging(force=True)

    yield configure
    if saved is None:
        os.environ.pop("LOG_FORMAT", None)
    else:
        os.environ["LOG_FORMAT"] = saved
    logs.configure_logging(force=True)
    logs.clear()


def _line(capfd: pytest.CaptureFixture[str], marker: str) -> str:
    lines = [line for line in capfd.readouterr().err.splitlines() if marker in line]
    assert len(lines) == 1, lines
    return lines[0]


def _extras() -> dict[str, object]:
    return {"attachment_id": uid("att"), "kind": "image", "job_id": uid("job"), "bytes": 123}


def test_a_text_line_carries_every_extra_field_and_the_bound_request_id(
    log_format: Callable[[str], None], capfd: pytest.CaptureFixture[str]
) -> None:
    log_format("text")
    rid, marker, extra = uid("rid"), uid("export"), _extras()
    logs.bind(request_id=rid)
    log.info("%s written", marker, extra={**extra, "reason": "not an image"})
    line = _line(capfd, marker)
    assert f"INFO domain.test_logs: {marker} written request_id={rid} " in line
    for key, value in extra.items():
        assert f" {key}={value}" in line, key
    assert ' reason="not an image"' in line  # a value with spaces stays one field


def test_a_json_line_has_every_extra_field_and_the_bound_context_as_keys(
    log_format: Callable[[str], None], capfd: pytest.CaptureFixture[str]
) -> None:
    log_format("json")
    rid, tid, marker, extra = uid("rid"), uid("task"), uid("export"), _extras()
    logs.bind(request_id=rid, task_id=tid)
    log.warning("%s written", marker, extra=extra)
    doc = json.loads(_line(capfd, marker))
    for key, value in extra.items():
        assert doc[key] == value, key
    assert doc["request_id"] == rid and doc["task_id"] == tid
    assert doc["msg"] == f"{marker} written"
    assert doc["level"] == "WARNING" and doc["logger"] == "domain.test_logs" and doc["ts"]


def test_a_json_line_carries_the_traceback_of_a_logged_exception(
    log_format: Callable[[str], None], capfd: pytest.CaptureFixture[str]
) -> None:
    log_format("json")
    marker = uid("boom")
    try:
        raise ValueError(marker)
    except ValueError:
        log.exception("stage failed", extra={"message_id": marker})
    doc = json.loads(_line(capfd, marker))
    assert doc["message_id"] == marker and f"ValueError: {marker}" in doc["exc"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_fields_named_like_text_or_credentials_never_reach_the_output(
    fmt: str, log_format: Callable[[str], None], capfd: pytest.CaptureFixture[str]
) -> None:
    log_format(fmt)
    mid, canary = uid("msg"), "canary-" + uid()
    secrets = {k: f"{canary}-{k}" for k in ("text", "body", "token", "authorization")}
    log.info("careless call", extra={"message_id": mid, **secrets})
    out = capfd.readouterr().err
    assert mid in out and canary not in out
    line = next(line for line in out.splitlines() if mid in line)
    if fmt == "json":
        doc = json.loads(line)
        assert all(doc[k] == logs.REDACTED for k in secrets)
    else:
        assert all(f" {k}={logs.REDACTED}" in line for k in secrets)


@ONE_DATABASE
def test_logs_carry_request_ids_and_callers_but_no_message_text_or_secrets(
    api: Api, live: Stack, capfd: pytest.CaptureFixture[str]
) -> None:
    """Post a canary text with a token and an API key: neither web nor worker logs them."""
    a, b = uid(), uid()
    canary = "canary-" + uuid.uuid4().hex
    cid = api.conversation(a, b)
    rid = "ops-" + uid("r")
    resp = api.post(
        f"/v1/conversations/{cid}/messages",
        user=a,
        json={"text": f"{canary} my mail is x@example.com"},
        headers={"X-Request-ID": rid},
    )
    mid = resp.get_json()["id"]
    api.patch(f"/v1/messages/{mid}", user=a, json={"text": f"{canary} edited"})
    key = api.api_key("ops-canary")
    api.get("/v1/conversations", key=key)
    api.get("/v1/conversations", headers={"Authorization": "Bearer not-a-valid-token"})
    wait_delivered(live, b, [mid])
    wait_for(lambda: rid in live.worker.log(), 15, what="the worker's lines for the request")
    web_log = capfd.readouterr().err
    worker_log = live.worker.log()
    token = api.token(a)
    for where, text in (("web", web_log), ("worker", worker_log)):
        assert canary not in text, f"message text in the {where} log"
        assert token not in text and token.split(".")[2] not in text, f"a JWT in the {where} log"
        # pk_<prefix>_<secret>; the secret is urlsafe base64 and may itself hold "_"
        secret = key.split("_", 2)[2]
        assert key not in text and secret not in text, f"an API key in the {where} log"
        assert "not-a-valid-token" not in text
    access = [line for line in web_log.splitlines() if f"/v1/conversations/{cid}/messages" in line]
    assert any(rid in line and a in line and "duration_ms=" in line for line in access), access
