"""Offline push (issue #7) end to end: a real Celery worker delivers to real local receivers.

The Web Push receiver decrypts with the browser's own keys and checks the VAPID JWT; the
webhook receiver checks the HMAC; e-mail goes to a real SMTP server (aiosmtpd). Each test runs
on SQLite and on PostgreSQL, with a stack of its own (push settings shortened for tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.config import with_overrides
from core.ids import utcnow
from models import Notification, PushDelivery, PushSubscription
from tests.conftest import SERVICES, RedisServer, Stack, free_port, stack_on, wait_for
from tests.factories import Api, scrape, stream_events, uid, value, wait_delivered
from tests.push_receivers import Browser, HttpReceiver, SmtpSink, signature_ok, verify_vapid

PLATFORM_SECRET = "platform-secret-for-tests-0123456789"
PLATFORM_PATH = "/platform"
SETTINGS: dict[str, tuple[str, Any]] = {
    # setting name: (environment variable, value)
    "push_delay_s": ("PARLEY_PUSH_DELAY_S", 2.0),
    "push_ttl_s": ("PARLEY_PUSH_TTL_S", 30),
    "push_max_attempts": ("PARLEY_PUSH_MAX_ATTEMPTS", 3),
    "push_retry_base_s": ("PARLEY_PUSH_RETRY_BASE_S", 0.3),
    "push_retry_max_s": ("PARLEY_PUSH_RETRY_MAX_S", 2.0),
    "push_timeout_s": ("PARLEY_PUSH_TIMEOUT_S", 5.0),
    "push_email_digest_s": ("PARLEY_PUSH_EMAIL_DIGEST_S", 4.0),
    "push_allow_private_targets": ("PARLEY_PUSH_ALLOW_PRIVATE_TARGETS", True),
    "platform_webhook_secret": ("PARLEY_PLATFORM_WEBHOOK_SECRET", PLATFORM_SECRET),
}


@pytest.fixture(scope="module")
def http() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port())
    yield sink
    sink.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def push(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    http: HttpReceiver,
    smtp: SmtpSink,
) -> Iterator[Stack]:
    """A stack whose worker pushes to the local receivers (Redis dbs 11/12)."""
    st = stack_on(request, redis_server, tmp_path_factory, (11, 12), "push")
    values = {name: value for name, (_, value) in SETTINGS.items()}
    values["smtp_url"] = smtp.url
    values["platform_webhook_url"] = http.url(PLATFORM_PATH)
    st.svc.settings = with_overrides(st.svc.settings, **values)
    st.worker.env.update({var: str(value) for var, value in SETTINGS.values()})
    st.worker.env["PARLEY_SMTP_URL"] = smtp.url
    st.worker.env["PARLEY_PLATFORM_WEBHOOK_URL"] = http.url(PLATFORM_PATH)
    st.worker.start(st.app)
    SERVICES["celery worker"] = "real `celery -A worker worker` subprocess(es)"
    yield st
    st.worker.stop()
    st.svc.engine.dispose()


@pytest.fixture
def api(push: Stack) -> Api:
    return Api(push)


def _subscribe_browser(api: Api, http: HttpReceiver, user: str) -> Browser:
    browser = Browser(http, uid("b"))
    resp = api.post("/v1/push/subscriptions", user=user, json=browser.subscription())
    assert resp.status_code == 201, resp.get_json()
    return browser


def _deliveries(stack: Stack, user: str) -> list[PushDelivery]:
    with stack.svc.Session() as s:
        return list(
            s.scalars(
                select(PushDelivery)
                .where(PushDelivery.user_id == user, PushDelivery.target != "platform")
                .order_by(PushDelivery.id)
            )
        )


def _final(stack: Stack, user: str, count: int = 1) -> list[PushDelivery]:
    """Wait until `count` deliveries of the user ended (not pending or sending)."""

    def done() -> list[PushDelivery] | None:
        rows = [d for d in _deliveries(stack, user) if d.state not in ("pending", "sending")]
        return rows if len(rows) >= count else None

    rows: list[PushDelivery] = wait_for(done, 30, what=f"{count} finished delivery(ies)")
    return rows


def _note(stack: Stack, user: str, count: int = 1) -> Notification:
    def found() -> Notification | None:
        with stack.svc.Session() as s:
            row = s.scalar(
                select(Notification).where(
                    Notification.user_id == user, Notification.read_at.is_(None)
                )
            )
            return row if row is not None and row.count >= count else None

    note: Notification = wait_for(found, 20, what="an unread notification")
    return note


# --- Web Push ----------------------------------------------------------------------------------


def test_web_push_is_encrypted_to_the_browser_and_signed_with_the_published_vapid_key(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "the van arrives at nine")["id"]
    got = http.wait(browser.path)[0]
    event = browser.decrypt(got)
    assert event["type"] == "notification" and event["user_id"] == b
    data = event["data"]
    assert data["message_id"] == mid and data["conversation_id"] == cid
    assert data["text"] == "the van arrives at nine" and data["sender_id"] == a
    assert data["count"] == 1 and data["summary"] == "1 new message"
    public = api.get("/v1/push/vapid-public-key").get_json()["public_key"]
    verify_vapid(got, public)
    assert 0 < int(got.headers["TTL"]) <= 30
    assert len(got.headers["Topic"]) == 32
    assert _final(push, b)[0].state == "sent"


def test_a_burst_collapses_into_one_push_that_counts_the_messages(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    cid = api.conversation(a, b)
    ids = [api.send(a, cid, f"part {i}")["id"] for i in range(3)]
    wait_delivered(push, b, ids)
    got = http.wait(browser.path)
    time.sleep(push.svc.settings.push_delay_s + 1)  # a second push would have come by now
    pushes = [browser.decrypt(r)["data"] for r in http.requests(browser.path)]
    assert len(got) == 1 and len(pushes) == 1
    assert pushes[0]["count"] == 3 and pushes[0]["summary"] == "3 new messages"
    assert pushes[0]["message_id"] == ids[-1]


def test_an_endpoint_the_push_service_calls_gone_deletes_the_subscription(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    http.script(browser.path, (410, {}))
    cid = api.conversation(a, b)
    api.send(a, cid, "anyone there?")
    http.wait(browser.path)
    assert _final(push, b)[0].state == "gone"
    assert api.get("/v1/push/subscriptions", user=b).get_json()["items"] == []


def test_429_with_retry_after_is_retried_no_sooner_than_asked(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    http.script(browser.path, (429, {"Retry-After": "2"}))
    cid = api.conversation(a, b)
    api.send(a, cid, "slow down")
    first, second = http.wait(browser.path, 2)[:2]
    assert second.at - first.at >= 2.0
    row = _final(push, b)[0]
    assert row.state == "sent" and row.attempts == 2


def test_a_failing_endpoint_is_retried_with_backoff_then_kept_as_a_dead_letter(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    http.always[browser.path] = (500, {})
    retried = value(scrape(api), "parley_push_results_total", provider="webpush", outcome="retry")
    cid = api.conversation(a, b)
    api.send(a, cid, "into the void")
    row = _final(push, b)[0]
    got = http.requests(browser.path)
    assert row.state == "dead" and row.attempts == 3 and len(got) == 3
    now = value(scrape(api), "parley_push_results_total", provider="webpush", outcome="retry")
    assert now - retried == 3  # every attempt counted by the worker, seen on /metrics
    assert "gave up after 3 attempts" in (row.reason or "")
    assert got[1].at - got[0].at >= 0.1 and got[2].at - got[1].at >= 0.25  # backed off
    key = api.api_key()
    page = api.get("/v1/push/dead-letters?limit=200", key=key).get_json()
    mine = [d for d in page["items"] if d["id"] == row.id]
    assert mine and mine[0]["last_status"] == 500 and mine[0]["user_id"] == b
    denied = api.get("/v1/push/dead-letters", user=b)
    assert denied.status_code == 403 and denied.content_type == "application/problem+json"


def test_a_push_that_could_only_be_sent_after_its_ttl_is_dropped(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    """The push service asks to come back in 120 s; the TTL is 30 s: drop it, never send late."""
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    http.script(browser.path, (503, {"Retry-After": "120"}))
    cid = api.conversation(a, b)
    api.send(a, cid, "soon stale")
    row = _final(push, b)[0]
    assert row.state == "expired" and len(http.requests(browser.path)) == 1


# --- who gets pushed ---------------------------------------------------------------------------


def test_a_user_who_comes_online_during_the_delay_gets_no_push(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    from web.live.presence import PresenceStore

    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    cid = api.conversation(a, b)
    api.send(a, cid, "are you there")
    _note(push, b)  # recorded while offline; the push waits for the delay
    PresenceStore(push.redis, "test-node", 60).touch([b])
    row = _final(push, b)[0]
    assert (row.state, row.reason) == ("skipped", "online")
    assert http.requests(browser.path) == []


def test_muted_and_level_none_members_get_no_push_while_others_do(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, muted, silent, c = uid(), uid(), uid(), uid()
    browsers = {u: _subscribe_browser(api, http, u) for u in (muted, silent, c)}
    cid = api.conversation(a, muted, silent, c)
    until = (utcnow() + timedelta(hours=1)).isoformat()
    assert (
        api.patch(f"/v1/conversations/{cid}/me", user=muted, json={"muted_until": until})
    ).status_code == 200
    assert (
        api.patch(f"/v1/conversations/{cid}/me", user=silent, json={"notification_level": "none"})
    ).status_code == 200
    api.send(a, cid, "meeting moved")
    http.wait(browsers[c].path)  # the sentinel got its push: the others would have by now
    time.sleep(0.5)
    assert http.requests(browsers[muted].path) == []
    assert http.requests(browsers[silent].path) == []
    assert _deliveries(push, muted) == [] and _deliveries(push, silent) == []


def test_mentions_level_is_pushed_only_for_messages_that_mention_the_user(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b, c = uid(), uid(), uid()
    browser = _subscribe_browser(api, http, b)
    sentinel = _subscribe_browser(api, http, c)
    cid = api.conversation(a, b, c)
    api.patch(f"/v1/conversations/{cid}/me", user=b, json={"notification_level": "mentions"})
    api.send(a, cid, "general chatter")
    http.wait(sentinel.path)
    time.sleep(0.5)
    assert http.requests(browser.path) == []
    mid = api.send(a, cid, f"over to you @{b}, thanks")["id"]
    got = http.wait(browser.path)
    assert browser.decrypt(got[0])["data"]["message_id"] == mid
    mid2 = api.send(a, cid, "by metadata", metadata={"mentions": [b]})["id"]
    got = http.wait(browser.path, 2)
    assert browser.decrypt(got[-1])["data"]["message_id"] == mid2


def test_reading_within_the_delay_sends_nothing_and_clears_the_badge(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    cid = api.conversation(a, b)
    api.send(a, cid, "read me quickly")
    note = _note(push, b)
    assert api.get("/v1/notifications", user=b).get_json()["unread_count"] == 1
    assert api.post(f"/v1/conversations/{cid}/read", user=b, json={"seq": 1}).status_code == 200
    assert api.get("/v1/notifications", user=b).get_json()["unread_count"] == 0
    row = _final(push, b)[0]
    assert (row.state, row.reason) == ("skipped", "read")
    assert http.requests(browser.path) == []
    events = wait_for(
        lambda: [e for e in stream_events(push, b, "notification") if e["data"]["read"]],
        10,
        what="a notification read event",
    )
    assert events[0]["data"]["id"] == note.id


def test_reading_after_the_push_retracts_it_under_the_same_topic(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    hook = uid("hook")
    resp = api.post(
        "/v1/push/subscriptions", user=b, json={"kind": "webhook", "url": http.url(f"/{hook}")}
    )
    secret = resp.get_json()["secret"]
    cid = api.conversation(a, b)
    api.send(a, cid, "read me later")
    first = http.wait(browser.path)[0]
    http.wait(f"/{hook}")
    api.post(f"/v1/conversations/{cid}/read", user=b, json={"seq": 1})
    second = http.wait(browser.path, 2)[1]
    assert second.headers["Topic"] == first.headers["Topic"]
    retraction = browser.decrypt(second)
    assert retraction["type"] == "notification.read"
    assert retraction["data"]["conversation_id"] == cid
    hooked = http.wait(f"/{hook}", 2)[1]
    assert signature_ok(secret, hooked)


# --- webhooks and e-mail -----------------------------------------------------------------------


def test_webhook_posts_are_signed_with_the_secret_shown_only_at_creation(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    import json

    a, b = uid(), uid()
    path = "/" + uid("hook")
    resp = api.post(
        "/v1/push/subscriptions", user=b, json={"kind": "webhook", "url": http.url(path)}
    )
    assert resp.status_code == 201
    created = resp.get_json()
    assert created["secret"].startswith("whsec_") and created["url"] == http.url(path)
    listed = api.get("/v1/push/subscriptions", user=b).get_json()["items"]
    assert [s["id"] for s in listed] == [created["id"]] and "secret" not in listed[0]
    again = api.post(
        "/v1/push/subscriptions", user=b, json={"kind": "webhook", "url": http.url(path)}
    )
    assert again.status_code == 409
    cid = api.conversation(a, b)
    api.send(a, cid, "hook me")
    got = http.wait(path)[0]
    assert signature_ok(created["secret"], got)
    assert not signature_ok("some other secret", got)
    event = json.loads(got.body)
    assert event["type"] == "notification" and event["data"]["text"] == "hook me"
    assert got.headers["X-Parley-Delivery"] == event["id"]


def test_the_platform_webhook_hears_every_offline_push_signed_with_its_secret(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    import json

    a, b = uid(), uid()
    cid = api.conversation(a, b)
    mid = api.send(a, cid, "for the platform")["id"]

    def mine() -> list[Any]:
        return [r for r in http.requests(PLATFORM_PATH) if json.loads(r.body)["user_id"] == b]

    got = wait_for(mine, 30, what="the platform webhook")
    assert signature_ok(PLATFORM_SECRET, got[0])
    assert json.loads(got[0].body)["data"]["message_id"] == mid


def _confirmed_email(api: Api, smtp: SmtpSink, user: str, address: str) -> str:
    """Subscribe `address` and enter the code from its confirmation mail; the subscription id."""
    resp = api.post("/v1/push/subscriptions", user=user, json={"kind": "email", "address": address})
    assert resp.status_code == 201 and resp.get_json()["verified"] is False
    sid = resp.get_json()["id"]
    mail = smtp.wait(address)[-1]
    code = mail["Subject"].rsplit(" ", 1)[-1]
    assert code in mail.get_content()
    done = api.post(f"/v1/push/subscriptions/{sid}/verify", user=user, json={"code": code})
    assert done.status_code == 200 and done.get_json()["verified"] is True
    return str(sid)


def test_an_email_address_gets_nothing_but_its_code_until_the_code_is_entered(
    api: Api, push: Stack, smtp: SmtpSink
) -> None:
    a, b, mallory = uid(), uid(), uid()
    address = f"{b}@example.test"
    # Someone else subscribes b's address: b gets a code mail, never a digest of their messages.
    resp = api.post(
        "/v1/push/subscriptions", user=mallory, json={"kind": "email", "address": address}
    )
    assert resp.status_code == 201 and resp.get_json()["verified"] is False
    sid = resp.get_json()["id"]
    code_mail = smtp.wait(address)[0]
    assert "confirmation code" in code_mail["Subject"]
    cid = api.conversation(a, mallory)
    api.send(a, cid, "the gate code is 4711")
    wrong = api.post(f"/v1/push/subscriptions/{sid}/verify", user=mallory, json={"code": "AAAA"})
    assert wrong.status_code == 422 and wrong.content_type == "application/problem+json"
    code = code_mail["Subject"].rsplit(" ", 1)[-1]
    stolen = api.post(f"/v1/push/subscriptions/{sid}/verify", user=b, json={"code": code})
    assert stolen.status_code == 404  # a code only works for the subscription's own user
    with push.svc.ReadSession() as s:
        planned = s.scalars(select(PushDelivery).where(PushDelivery.target == sid)).all()
    assert planned == []  # an unconfirmed address is not a push target
    time.sleep(push.svc.settings.push_delay_s + 1)
    assert len(smtp.to(address)) == 1  # the code mail, nothing else
    listed = api.get("/v1/push/subscriptions", user=mallory).get_json()["items"]
    assert [x["verified"] for x in listed if x["id"] == sid] == [False]


def test_subscribing_again_resends_the_code_and_ten_wrong_codes_lock_the_subscription(
    api: Api, push: Stack, smtp: SmtpSink
) -> None:
    b = uid()
    address = f"{b}@example.test"
    body = {"kind": "email", "address": address}
    sid = api.post("/v1/push/subscriptions", user=b, json=body).get_json()["id"]
    first = smtp.wait(address)[0]
    again = api.post("/v1/push/subscriptions", user=b, json=body)
    assert again.status_code == 200 and again.get_json()["id"] == sid
    second = smtp.wait(address, 2)[1]
    assert second["Subject"] == first["Subject"]  # the same code, mailed again
    code = first["Subject"].rsplit(" ", 1)[-1]
    path = f"/v1/push/subscriptions/{sid}/verify"
    for _ in range(10):
        assert api.post(path, user=b, json={"code": "ZZZZ-ZZZZ"}).status_code == 422
    locked = api.post(path, user=b, json={"code": code})
    assert locked.status_code == 409 and locked.content_type == "application/problem+json"
    push.redis.delete(f"parley:verify:{sid}")  # the hour has passed
    assert api.post(path, user=b, json={"code": code.replace("-", "")}).status_code == 200


def test_email_digest_sends_one_mail_per_window_not_one_per_message(
    api: Api, push: Stack, smtp: SmtpSink
) -> None:
    a, b = uid(), uid()
    address = f"{b}@example.test"
    sid = _confirmed_email(api, smtp, b, address)
    same = api.post("/v1/push/subscriptions", user=b, json={"kind": "email", "address": address})
    assert same.status_code == 200 and same.get_json()["id"] == sid
    assert same.get_json()["verified"] is True
    c1 = api.conversation(a, b, subject="Boat trip")
    c2 = api.conversation(a, b, subject="Invoices")
    api.send(a, c1, "bring the life jackets")
    api.send(a, c2, "invoice 42 is ready")
    api.send(a, c1, "and sunscreen")
    first = smtp.wait(address, 2)[1]
    assert first["Subject"] == "3 unread messages in 2 conversations"
    body = first.get_content()
    assert "2 new messages" in body and "Boat trip" in body and "invoice 42 is ready" in body
    started = time.monotonic()
    api.send(a, c2, "invoice 43 too")
    second = smtp.wait(address, 3)[2]
    window = push.svc.settings.push_email_digest_s
    assert time.monotonic() - started >= window - 1  # waited for the digest window
    assert "invoice 43 too" in second.get_content()
    assert "bring the life jackets" not in second.get_content()  # already mailed
    time.sleep(1)
    assert len(smtp.to(address)) == 3  # the code, then two digests


# --- payload privacy ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sender", "id"])
def test_preview_setting_limits_what_the_payload_reveals(
    api: Api, push: Stack, http: HttpReceiver, mode: str
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    resp = api.patch("/v1/push/preferences", user=b, json={"preview": mode})
    assert resp.get_json() == {
        "preview": mode,
        "server_preview": "full",
        "effective_preview": mode,
    }
    cid = api.conversation(a, b, subject="Secret plans")
    api.send(a, cid, "the code is 1234")
    data = browser.decrypt(http.wait(browser.path)[0])["data"]
    assert data["preview"] == mode and "text" not in data
    assert "conversation_subject" not in data
    assert ("sender_id" in data) == (mode == "sender")
    assert {"notification_id", "conversation_id", "message_id", "count"} <= data.keys()


def test_full_preview_is_masked_as_the_recipient_would_see_it(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    cid = api.conversation(a, b)
    api.send(a, cid, "this shit is late")
    data = browser.decrypt(http.wait(browser.path)[0])["data"]
    assert data["text"] == "this **** is late"


CANARY = "walrus-canary-93be1c"


def test_payload_text_is_neither_stored_nor_logged(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    from sqlalchemy import text

    a, b = uid(), uid()
    browser = _subscribe_browser(api, http, b)
    path = "/" + uid("hook")
    api.post("/v1/push/subscriptions", user=b, json={"kind": "webhook", "url": http.url(path)})
    cid = api.conversation(a, b)
    api.send(a, cid, f"secret {CANARY}")
    assert CANARY in browser.decrypt(http.wait(browser.path)[0])["data"]["text"]
    http.wait(path)
    _final(push, b, 2)
    assert CANARY not in push.worker.log()
    with push.svc.engine.connect() as conn:
        for table in ("push_deliveries", "push_subscriptions", "notifications", "outbox"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):  # noqa: S608
                assert CANARY not in repr(row), f"plaintext in {table}"


# --- subscriptions API -------------------------------------------------------------------------


def test_subscription_bodies_are_validated_field_by_field(api: Api, push: Stack) -> None:
    u = uid()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "fax", "number": "1"}, "kind"),
        ({"kind": "webpush", "endpoint": "https://push.example/x"}, "keys"),
        (
            {
                "kind": "webpush",
                "endpoint": "https://push.example/x",
                "keys": {"p256dh": "AAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"},
            },
            "keys.p256dh",
        ),
        ({"kind": "webhook", "url": "ftp://example.com/hook"}, "url"),
        ({"kind": "webhook", "url": "https://example.com/h", "address": "x@y.z"}, "address"),
        ({"kind": "email", "address": "not an address"}, "address"),
    ]
    for body, field in cases:
        resp = api.post("/v1/push/subscriptions", user=u, json=body)
        assert resp.status_code == 422, (body, resp.get_json())
        assert resp.content_type == "application/problem+json"
        assert field in resp.get_json()["errors"], (field, resp.get_json())
    assert api.get("/v1/push/subscriptions", user=u).get_json()["items"] == []


def test_private_and_loopback_targets_are_refused_unless_allowed(api: Api, push: Stack) -> None:
    """SSRF: production refuses webhooks to internal addresses (tests allow loopback)."""
    u = uid()
    saved = push.svc.settings
    push.svc.settings = with_overrides(saved, push_allow_private_targets=False)
    try:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://10.0.0.8/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/hook",
            "http://localhost/hook",
        ):
            resp = api.post("/v1/push/subscriptions", user=u, json={"kind": "webhook", "url": url})
            assert resp.status_code == 422, url
            assert "url" in resp.get_json()["errors"]
    finally:
        push.svc.settings = saved


def test_a_browser_endpoint_belongs_to_whoever_subscribed_it_last(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    x, y = uid(), uid()
    browser = _subscribe_browser(api, http, x)
    again = api.post("/v1/push/subscriptions", user=x, json=browser.subscription())
    assert again.status_code == 200
    moved = api.post("/v1/push/subscriptions", user=y, json=browser.subscription())
    assert moved.status_code == 201
    assert api.get("/v1/push/subscriptions", user=x).get_json()["items"] == []
    assert len(api.get("/v1/push/subscriptions", user=y).get_json()["items"]) == 1


def test_deleting_a_subscription_shreds_it_and_only_its_owner_may(
    api: Api, push: Stack, http: HttpReceiver
) -> None:
    x, y = uid(), uid()
    _subscribe_browser(api, http, x)
    sid = api.get("/v1/push/subscriptions", user=x).get_json()["items"][0]["id"]
    with push.svc.Session() as s:
        key_id = s.get(PushSubscription, sid).key_id
    assert api.delete(f"/v1/push/subscriptions/{sid}", user=y).status_code == 404
    assert api.delete(f"/v1/push/subscriptions/{sid}", user=x).status_code == 204
    assert api.delete(f"/v1/push/subscriptions/{sid}", user=x).status_code == 404
    from models import DataKey

    with push.svc.Session() as s:
        assert s.get(DataKey, key_id) is None


def test_the_vapid_key_is_public_stable_and_kept_private_on_disk(api: Api, push: Stack) -> None:
    first = api.get("/v1/push/vapid-public-key")
    assert first.status_code == 200
    assert first.get_json() == api.get("/v1/push/vapid-public-key").get_json()
    key_file: Path = push.data_dir / "keys" / "vapid-private.pem"
    assert key_file.stat().st_mode & 0o077 == 0


# --- in-app notifications ----------------------------------------------------------------------


def test_in_app_notifications_list_page_and_read(api: Api, push: Stack) -> None:
    a, b = uid(), uid()
    convs = [api.conversation(a, b, subject=f"topic {i}") for i in range(3)]

    def badge_is(n: int) -> bool:
        return bool(api.get("/v1/notifications", user=b).get_json()["unread_count"] == n)

    for n, cid in enumerate(convs, 1):
        api.send(a, cid, "ping")
        wait_for(partial(badge_is, n), 20, what=f"{n} unread notification(s)")
    page = api.get("/v1/notifications?limit=2", user=b).get_json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = api.get(f"/v1/notifications?limit=2&cursor={page['next_cursor']}", user=b).get_json()
    items = page["items"] + rest["items"]
    assert [n["conversation_id"] for n in items] == list(reversed(convs))
    assert rest["next_cursor"] is None
    one = api.post(f"/v1/notifications/{items[0]['id']}/read", user=b)
    assert one.status_code == 200 and one.get_json()["read"] is True
    unread = api.get("/v1/notifications?unread=true", user=b).get_json()
    assert unread["unread_count"] == 2 and len(unread["items"]) == 2
    assert api.post(f"/v1/notifications/{items[0]['id']}/read", user=a).status_code == 404
    done = api.post("/v1/notifications/read-all", user=b)
    assert done.get_json() == {"updated": 2}
    assert api.get("/v1/notifications?unread=true", user=b).get_json()["items"] == []
    ids = {n["id"] for n in items}
    wait_for(
        lambda: {e["data"]["id"] for e in stream_events(push, b, "notification")} == ids,
        10,
        what="notification events in the user's stream",
    )

    def read_events() -> set[str]:
        return {
            e["data"]["id"] for e in stream_events(push, b, "notification") if e["data"]["read"]
        }

    wait_for(lambda: read_events() == ids, 10, what="a read event per notification")
