"""The HTTP contract: OpenAPI completeness and truth, health, problem+json, request ids."""

from __future__ import annotations

import copy
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from PIL import Image
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import TestResponse, encode_multipart

from tests.conftest import RedisServer, Stack, _make_stack, wait_for
from tests.factories import Api, uid, wait_delivered
from web.http import doc
from web.schemas.common import UndocumentedField
from web.schemas.messages import ReportSchema


def test_openapi_describes_every_route_with_problem_responses(api: Api, stack: Stack) -> None:
    spec = api.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule in stack.app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi.openapi_json") or rule.rule == "/v1/ws":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {path} is undocumented"
    post = spec["paths"]["/v1/conversations/{cid}/messages"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]
    assert "application/problem+json" in post["responses"]["422"]["content"]
    schemas: dict[str, Any] = spec["components"]["schemas"]
    assert {"Message", "Conversation", "Problem"} <= {n.replace("Schema", "") for n in schemas}


def test_readyz_is_503_naming_the_worker_when_none_answers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A stack whose broker (Redis db 7) has no worker: live but not ready."""
    st = _make_stack("no-worker", f"sqlite:///{tmp_path / 'p.db'}", 7, redis_server, tmp_path)
    try:
        api = Api(st)
        assert api.get("/healthz").status_code == 200
        resp = api.get("/readyz")
        assert resp.status_code == 503
        checks = resp.get_json()["checks"]
        assert checks["database"] == "ok" and checks["redis"] == "ok"
        assert checks["worker"].startswith("error")
    finally:
        st.svc.engine.dispose()


def test_readyz_is_200_when_database_redis_and_worker_answer(api: Api, live: Stack) -> None:
    resp = api.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["checks"] == {"database": "ok", "redis": "ok", "worker": "ok"}


def test_request_id_is_echoed_and_put_in_problems(api: Api) -> None:
    resp = api.get("/v1/conversations", headers={"X-Request-ID": "req-123"})
    assert resp.headers["X-Request-ID"] == "req-123"
    assert resp.get_json()["request_id"] == "req-123"
    assert resp.content_type == "application/problem+json"
    assert api.get("/v1/nowhere", user=uid()).content_type == "application/problem+json"


# --- the documented shape is the real one -------------------------------------------------------


class Contract:
    """Checks real answers against the operation /openapi.json documents for their method, path
    and status, as JSON Schema 2020-12 (what OpenAPI 3.1 schemas are). Component objects are
    closed here (no properties beyond the documented ones), so a field sent but not documented
    fails as surely as a documented type (or null) that the answer does not keep."""

    def __init__(self, spec: dict[str, Any]) -> None:
        spec = copy.deepcopy(spec)
        for component in spec["components"]["schemas"].values():
            if "properties" in component:
                component.setdefault("additionalProperties", False)
        self.spec = spec
        resource = DRAFT202012.create_resource(spec)
        self.registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
        self.checked: set[str] = set()

    def check(self, method: str, template: str, resp: TestResponse) -> dict[str, Any]:
        assert resp.status_code < 500, f"{method} {template}: {resp.get_json()}"
        responses = self.spec["paths"][template][method]["responses"]
        assert str(resp.status_code) in responses, f"{method} {template} {resp.status_code}"
        content = responses[str(resp.status_code)]["content"]
        assert resp.mimetype in content, f"{method} {template}: {resp.mimetype} undocumented"
        schema = content[resp.mimetype]["schema"]
        ref = schema["$ref"] if isinstance(schema, dict) else f"#/components/schemas/{schema}"
        validator = Draft202012Validator({"$ref": f"urn:openapi{ref}"}, registry=self.registry)
        body: dict[str, Any] = resp.get_json()
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(body)
        ]
        assert not errors, f"{method} {template} {resp.status_code} drifts from {ref}: {errors}"
        self.checked.add(ref.rsplit("/", 1)[-1])
        return body


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


def test_real_answers_have_the_shapes_openapi_documents(api: Api, live: Stack) -> None:
    """A conversation, a message (as sender and as recipient), pages, an attachment (processing,
    then ready with signed URLs), a notification, a report and problems, each as a client gets
    them, match the schema /openapi.json gives for that operation and status."""
    contract = Contract(api.get("/openapi.json").get_json())
    a, b = uid(), uid()
    cid = contract.check(
        "post",
        "/v1/conversations",
        api.post(
            "/v1/conversations",
            user=a,
            json={"type": "group", "members": [b], "subject": "the van", "context": None},
        ),
    )["id"]
    boundary, form = encode_multipart(
        MultiDict([("conversation_id", cid), ("file", FileStorage(io.BytesIO(_png()), "van.png"))])
    )
    upload = api.post(
        "/v1/attachments",
        user=a,
        data=form,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    aid = contract.check("post", "/v1/attachments", upload)["id"]
    ready = wait_for(
        lambda: api.get(f"/v1/attachments/{aid}", user=a).get_json()["state"] == "ready",
        60,
        0.1,
        "the attachment to be ready",
    )
    assert ready
    att = contract.check("get", "/v1/attachments/{aid}", api.get(f"/v1/attachments/{aid}", user=a))
    assert att["variants"]["original"]["url"]
    posted = api.post(
        f"/v1/conversations/{cid}/messages",
        user=a,
        json={
            "type": "image",
            "text": "the van arrives at nine",
            "client_msg_id": uid("m"),
            "attachments": [aid],
        },
    )
    assert posted.status_code == 202, posted.get_json()
    mid = contract.check("post", "/v1/conversations/{cid}/messages", posted)["id"]
    wait_delivered(live, b, [mid])
    page = f"/v1/conversations/{cid}/messages"
    for user in (a, b):
        got = contract.check("get", "/v1/conversations/{cid}/messages", api.get(page, user=user))
        assert [m["id"] for m in got["items"]] == [mid]
    mine = contract.check("get", "/v1/messages/{mid}", api.get(f"/v1/messages/{mid}", user=a))
    assert mine["moderation"] is not None and mine["attachments"][0]["id"] == aid
    emoji = "/v1/messages/{mid}/reactions/{emoji}"
    contract.check("put", emoji, api.put(f"/v1/messages/{mid}/reactions/👍", user=b))
    contract.check("get", "/v1/conversations", api.get("/v1/conversations", user=b))
    contract.check("get", "/v1/conversations/{cid}", api.get(f"/v1/conversations/{cid}", user=b))
    contract.check("get", "/v1/unread", api.get("/v1/unread", user=b))
    report = api.post(f"/v1/messages/{mid}/reports", user=b, json={"reason": "spam"})
    contract.check("post", "/v1/messages/{mid}/reports", report)
    contract.check(
        "get",
        "/v1/conversations/{cid}/attachments",
        api.get(f"/v1/conversations/{cid}/attachments", user=b),
    )
    notes = wait_for(
        lambda: api.get("/v1/notifications", user=b).get_json()["items"],
        30,
        0.1,
        "b's notification",
    )
    contract.check("get", "/v1/notifications", api.get("/v1/notifications", user=b))
    read = api.post(f"/v1/notifications/{notes[0]['id']}/read", user=b)
    assert contract.check("post", "/v1/notifications/{nid}/read", read)["read"] is True
    read_to = api.post(f"/v1/conversations/{cid}/read", user=b, json={"seq": 1})
    contract.check("post", "/v1/conversations/{cid}/read", read_to)
    contract.check("delete", "/v1/messages/{mid}", api.delete(f"/v1/messages/{mid}", user=a))
    refused = api.post(f"/v1/conversations/{cid}/messages", user=a, json={"text": 5})
    assert refused.status_code == 422
    contract.check("post", "/v1/conversations/{cid}/messages", refused)
    contract.check("get", "/v1/messages/{mid}", api.get("/v1/messages/nope", user=a))
    assert {
        "Conversation",
        "ConversationPage",
        "Message",
        "MessagePage",
        "Attachment",
        "AttachmentPage",
        "NotificationPage",
        "Notification",
        "Report",
        "Problem",
    } <= contract.checked


def test_a_field_a_response_schema_does_not_declare_is_refused_not_dropped() -> None:
    """Renderers and schemas cannot drift apart quietly: dumping an undeclared key fails."""
    with pytest.raises(UndocumentedField, match="ReportSchema does not declare secret"):
        ReportSchema().dump({"id": "r1", "reason": "spam", "secret": "x"})
    assert ReportSchema().dump({"id": "r1", "reason": "spam"}) == {"id": "r1", "reason": "spam"}


def test_a_view_answering_a_status_its_doc_does_not_list_fails() -> None:
    """`@doc` lists every status a view answers; another one is a bug, not an answer."""

    @doc("A view", responses={200: ReportSchema})
    def view() -> tuple[dict[str, Any], int]:
        return {"id": "r1"}, 201

    with pytest.raises(TypeError, match="answered 201"):
        view()


def test_timestamps_are_written_in_utc_with_z_and_text_must_be_an_instant() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    assert ReportSchema().dump({"created_at": when}) == {
        "created_at": "2026-01-02T03:04:05.600000Z"
    }
    assert ReportSchema().dump({"created_at": "2026-01-02T03:04:05Z"}) == {
        "created_at": "2026-01-02T03:04:05Z"
    }
    with pytest.raises(ValueError, match="not an instant"):
        ReportSchema().dump({"created_at": "2026-01-02T03:04:05"})
