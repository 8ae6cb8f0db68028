"""Retention (#8): policies, the two-phase purge across database and storage, tombstones, the
lock, the beat task and the CLI.

The module runs on stacks of its own (SQLite and a fresh PostgreSQL database, Redis dbs 13/14,
a real worker): the purge is global, so it must not meet other modules' data. Policies are in
seconds; the purge takes `now`, so the grace period (a week by default) passes without waiting.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from core.config import with_overrides
from core.ids import utcnow
from domain.retention.purge import LOCK_KEY, PurgeReport, purge_lock
from domain.retention.purge import run as run_purge
from models import Attachment, Message, MessageEdit, Notification, Reaction, Report
from tests.conftest import (
    SERVICES,
    RedisServer,
    Stack,
    stack_on,
    wait_for,
)
from tests.factories import Api, stream_events, uid, wait_delivered

GRACE = timedelta(days=7)  # the default PARLEY_RETENTION_GRACE_S


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ret(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    st = stack_on(
        request,
        redis_server,
        tmp_path_factory,
        (13, 14),
        "retention",
    )
    st.redis.flushdb()
    st.worker.start(st.app)
    SERVICES["celery worker"] = "real `celery -A worker worker` subprocess(es)"
    yield st
    st.worker.stop()
    st.svc.engine.dispose()


@pytest.fixture
def api(ret: Stack) -> Api:
    return Api(ret)


def purge(st: Stack, now: datetime, **kw: Any) -> PurgeReport:
    with st.app.app_context():
        return run_purge(st.svc, now=now, **kw)


def upload_text(api: Api, user: str, cid: str, body: bytes, name: str = "notes.txt") -> str:
    """Upload a small text file and wait until the media stage made it ready."""
    boundary, data = encode_multipart(
        MultiDict([("conversation_id", cid), ("file", FileStorage(io.BytesIO(body), name))])
    )
    resp = api.post(
        "/v1/attachments",
        user=user,
        data=data,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert resp.status_code == 202, resp.get_json()
    aid = str(resp.get_json()["id"])
    wait_for(
        lambda: api.get(f"/v1/attachments/{aid}", user=user).get_json()["state"] == "ready",
        60,
        0.1,
        f"attachment {aid} to be ready",
    )
    return aid


def stored(st: Stack, prefix: str = "") -> set[str]:
    from domain.attachments import storage_for

    with st.app.app_context():
        return set(storage_for(st.svc).keys(prefix))


def set_policy(api: Api, who: str, cid: str, **body: Any) -> Any:
    return api.patch(f"/v1/conversations/{cid}/retention", user=who, json=body)


def count(st: Stack, model: Any, *where: Any) -> int:
    with st.svc.Session() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def unread(api: Api, user: str, cid: str) -> int:
    return int(api.get(f"/v1/conversations/{cid}", user=user).get_json()["unread_count"])


class Scene:
    """Conversation `cid` (policy 60 s) with three old messages that carry an edit, a reaction,
    a report and an attachment, then one new message; conversation `other` (no policy) with
    an older message and an attachment of its own."""

    def __init__(self, api: Api, st: Stack) -> None:
        self.a, self.b = uid(), uid()
        a, b = self.a, self.b
        self.other = api.conversation(a, b)
        self.other_file = upload_text(api, a, self.other, b"kept elsewhere")
        self.kept_elsewhere = api.send(
            a, self.other, None, type="file", attachments=[self.other_file]
        )
        self.cid = api.conversation(a, b)
        assert set_policy(api, a, self.cid, retention_seconds=60).status_code == 200
        self.file = upload_text(api, a, self.cid, b"old notes")
        self.old = [api.send(a, self.cid, None, type="file", attachments=[self.file])]
        self.old += [api.send(a, self.cid, f"old message {i}") for i in (1, 2)]
        wait_delivered(st, b, [m["id"] for m in self.old] + [self.kept_elsewhere["id"]])
        assert (
            api.patch(
                f"/v1/messages/{self.old[1]['id']}",
                user=a,
                json={"text": "old message one, edited"},
            ).status_code
            == 200
        )
        assert api.put(f"/v1/messages/{self.old[1]['id']}/reactions/👍", user=b).status_code == 200
        report = api.post(
            f"/v1/messages/{self.old[2]['id']}/reports", user=b, json={"reason": "spam"}
        )
        assert report.status_code == 201
        assert (
            api.post(f"/v1/conversations/{self.cid}/read", user=b, json={"seq": 2}).status_code
            == 200
        )
        time.sleep(0.01)
        self.cut = utcnow()  # everything above is older than this
        time.sleep(0.01)
        self.new = api.send(a, self.cid, "a fresh message")
        wait_delivered(st, b, [self.new["id"]])
        self.hide_at = self.cut + timedelta(seconds=60)  # the old ones are past 60 s, new is not
        self.files_before = stored(st, f"attachments/{self.cid}/")
        assert self.files_before  # the attachment's variants are in storage


def test_expired_messages_vanish_from_every_read_at_once_and_cursors_stay_whole(
    api: Api, ret: Stack
) -> None:
    """Phase 1: hidden from lists, fetches (even for moderators and API keys), previews and
    unread counts; the read cursor and last_seq are untouched; clients get one event."""
    sc = Scene(api, ret)
    key = api.api_key()
    report = purge(ret, sc.hide_at)
    assert report.hidden >= 3 and sc.cid in report.conversations
    listed = api.get(f"/v1/conversations/{sc.cid}/messages", user=sc.b).get_json()["items"]
    assert [m["id"] for m in listed] == [sc.new["id"]]
    for m in sc.old:
        assert api.get(f"/v1/messages/{m['id']}", user=sc.a).status_code == 404
        assert api.get(f"/v1/messages/{m['id']}", key=key).status_code == 404
    by_key = api.get(f"/v1/conversations/{sc.cid}/messages", key=key).get_json()["items"]
    assert [m["id"] for m in by_key] == [sc.new["id"]]
    conv = api.get(f"/v1/conversations/{sc.cid}", user=sc.b).get_json()
    assert conv["last_seq"] == 4 and conv["me"]["read_seq"] == 2
    assert conv["unread_count"] == 1  # seq 3 was unread and is hidden; seq 4 is left
    assert conv["last_message"]["id"] == sc.new["id"]
    assert api.get(f"/v1/attachments/{sc.file}", user=sc.b).status_code == 404
    media = api.get(f"/v1/conversations/{sc.cid}/attachments", user=sc.b).get_json()["items"]
    assert media == []  # the hidden file message's attachment left the media list too
    queue = api.get("/v1/moderation/queue?kind=reported&limit=200", key=key).get_json()["items"]
    assert sc.old[2]["id"] not in {m["id"] for m in queue}  # reported, then hidden
    events = [
        e["data"]
        for e in stream_events(ret, sc.b, "conversation.updated")
        if e["data"].get("change") == "retention" and "hidden_through_seq" in e["data"]
    ]
    assert {"conversation_id": sc.cid, "change": "retention", "hidden_through_seq": 3} in events
    # the other conversation and the new message are untouched
    other = api.get(f"/v1/conversations/{sc.other}/messages", user=sc.b).get_json()["items"]
    assert [m["id"] for m in other] == [sc.kept_elsewhere["id"]]
    # hiding again changes nothing; posting goes on from seq 5
    assert purge(ret, sc.hide_at).hidden == 0
    assert api.send(sc.a, sc.cid, "after the purge")["seq"] == 5


def test_hidden_messages_are_deleted_with_everything_hanging_off_them_after_the_grace_period(
    api: Api, ret: Stack
) -> None:
    """Phase 2: rows, edit history, reactions, reports, notifications, attachment rows and their
    files in storage go; nothing of the other conversation or of newer messages does."""
    sc = Scene(api, ret)
    old_ids = [m["id"] for m in sc.old]
    purge(ret, sc.hide_at)
    purge(ret, sc.hide_at + GRACE - timedelta(seconds=1))
    assert count(ret, Message, Message.id.in_(old_ids)) == 3  # hidden, not yet deleted
    report = purge(ret, sc.hide_at + GRACE + timedelta(seconds=1))
    assert report.purged >= 3 and report.attachments >= 1 and report.files >= 1
    assert count(ret, Message, Message.id.in_(old_ids)) == 0
    for model in (MessageEdit, Reaction, Report, Notification):
        assert count(ret, model, model.message_id.in_(old_ids)) == 0
    assert count(ret, Attachment, Attachment.id == sc.file) == 0
    assert stored(ret, f"attachments/{sc.cid}/") == set()
    assert not any(k.endswith(sc.file) for k in stored(ret, "uploads/"))
    # untouched: the other conversation and its file; the new message is hidden by now (a
    # week has passed for it too) but its own grace period has only begun
    assert count(ret, Message, Message.id == sc.kept_elsewhere["id"]) == 1
    assert count(ret, Message, Message.id == sc.new["id"], Message.expired_at.is_not(None)) == 1
    assert stored(ret, f"attachments/{sc.other}/")
    body = api.get(f"/v1/messages/{sc.kept_elsewhere['id']}", user=sc.b).get_json()
    assert [a["id"] for a in body["attachments"]] == [sc.other_file]
    conv = api.get(f"/v1/conversations/{sc.cid}", user=sc.b).get_json()
    assert (conv["last_seq"], conv["me"]["read_seq"], conv["unread_count"]) == (4, 2, 0)
    assert conv["last_message"] is None
    assert api.get(f"/v1/conversations/{sc.cid}/messages", user=sc.b).get_json()["items"] == []
    assert api.send(sc.a, sc.cid, "still counting")["seq"] == 5  # seq never goes back


def test_a_deleted_message_loses_its_text_at_once_and_its_tombstone_after_the_grace_period(
    api: Api, ret: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    gone = api.send(a, cid, "regrettable words")
    kept = api.send(a, cid, "fine words")
    wait_delivered(ret, b, [gone["id"], kept["id"]])
    assert (
        api.patch(
            f"/v1/messages/{gone['id']}", user=a, json={"text": "second thoughts"}
        ).status_code
        == 200
    )
    assert api.delete(f"/v1/messages/{gone['id']}", user=a).status_code == 200
    with ret.svc.Session() as s:
        row = s.get(Message, gone["id"])
        assert row is not None and row.text_ct is None and row.key_id is None
        deleted_at = row.deleted_at
    assert count(ret, MessageEdit, MessageEdit.message_id == gone["id"]) == 0
    seen = api.get(f"/v1/messages/{gone['id']}", user=b).get_json()
    assert seen["deleted"] is True and seen["text"] is None
    assert deleted_at is not None
    purge(ret, deleted_at + GRACE - timedelta(seconds=1))
    assert count(ret, Message, Message.id == gone["id"]) == 1
    report = purge(ret, deleted_at + GRACE + timedelta(seconds=1))
    assert report.tombstones >= 1
    assert count(ret, Message, Message.id == gone["id"]) == 0
    assert api.get(f"/v1/messages/{kept['id']}", user=b).get_json()["text"] == "fine words"


def test_policy_rights_validation_inheritance_and_undo_within_the_grace_period(
    api: Api, ret: Stack
) -> None:
    owner, member, mod = uid(), uid(), uid()
    cid = api.conversation(owner, member)
    msg = api.send(owner, cid, "keep me if you can")
    wait_delivered(ret, member, [msg["id"]])
    url = f"/v1/conversations/{cid}/retention"
    assert api.get(url, user=member).get_json() == {
        "conversation_id": cid,
        "retention_seconds": None,
        "inherited": True,
        "effective_seconds": None,
        "grace_seconds": 604800,
    }
    assert set_policy(api, member, cid, retention_seconds=5).status_code == 403
    assert api.get(url, user=uid()).status_code == 404
    for bad in ({}, {"retention_seconds": -1}, {"retention_seconds": 5, "retention_days": 1}):
        resp = set_policy(api, owner, cid, **bad)
        assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    assert set_policy(api, owner, cid, retention_days=0.5).get_json()["effective_seconds"] == 43200
    resp = api.patch(url, user=mod, roles=("moderator",), json={"retention_seconds": 1})
    assert resp.status_code == 200 and resp.get_json()["effective_seconds"] == 1
    assert (
        api.patch(url, key=api.api_key(), json={"retention_seconds": 0}).get_json()[
            "effective_seconds"
        ]
        is None
    )  # 0 keeps forever
    set_policy(api, owner, cid, retention_seconds=1)
    purge(ret, utcnow() + timedelta(seconds=5))
    assert api.get(f"/v1/messages/{msg['id']}", user=member).status_code == 404
    back = set_policy(api, owner, cid, retention_seconds=None).get_json()
    assert back["inherited"] is True and back["effective_seconds"] is None
    assert api.get(f"/v1/messages/{msg['id']}", user=member).get_json()["text"] == (
        "keep me if you can"
    )  # hidden, not yet deleted: the new policy brings it back
    assert api.get(
        "/v1/moderation/audit?action=conversation.retention&target_id=" + cid, key=api.api_key()
    ).get_json()["items"]


def test_the_global_default_applies_where_no_override_is_set(api: Api, ret: Stack) -> None:
    a, b = uid(), uid()
    inherits, forever, longer = (api.conversation(a, b) for _ in range(3))
    set_policy(api, a, forever, retention_seconds=0)
    set_policy(api, a, longer, retention_days=30)
    sent = {c: api.send(a, c, "hello there")["id"] for c in (inherits, forever, longer)}
    wait_delivered(ret, b, list(sent.values()))
    svc = ret.svc
    saved = svc.settings
    svc.settings = with_overrides(saved, retention_days=10 / 86400)
    try:
        purge(ret, utcnow() + timedelta(seconds=60))
    finally:
        svc.settings = saved
    assert api.get(f"/v1/messages/{sent[inherits]}", user=b).status_code == 404
    assert api.get(f"/v1/messages/{sent[forever]}", user=b).status_code == 200
    assert api.get(f"/v1/messages/{sent[longer]}", user=b).status_code == 200
    defaults = api.get("/v1/privacy/retention", user=a).get_json()
    assert defaults == {
        "retention_days": None,
        "retention_seconds": None,
        "grace_seconds": 604800,
        "interval_seconds": 600,
    }


def _race(st: Stack, now: datetime, runs: int = 4) -> list[PurgeReport]:
    """`runs` purges at once, without the lock, over batches of 5 rows."""
    results: list[PurgeReport] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(purge(st, now, lock=False))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    saved = st.svc.settings
    st.svc.settings = with_overrides(saved, retention_batch=5)
    try:
        threads = [threading.Thread(target=one) for _ in range(runs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        st.svc.settings = saved
    assert errors == [] and len(results) == runs
    return results


def test_purges_running_at_once_neither_double_delete_nor_crash(api: Api, ret: Stack) -> None:
    """Four purges at once with no lock, over small batches: every row is hidden once and
    deleted once in total (the counts add up exactly). With the lock, a purge started while
    another runs does nothing."""
    purge(ret, utcnow() + GRACE * 4)  # start from a database with nothing left to purge
    a, b = uid(), uid()
    convs = [api.conversation(a, b) for _ in range(2)]
    for cid in convs:
        set_policy(api, a, cid, retention_seconds=1)
    ids = [api.send(a, convs[i % 2], f"message number {i}")["id"] for i in range(24)]
    wait_delivered(ret, b, ids)
    hide_at = utcnow() + timedelta(seconds=30)
    assert sum(r.hidden for r in _race(ret, hide_at)) == len(ids)
    assert count(ret, Message, Message.id.in_(ids), Message.expired_at.is_not(None)) == len(ids)
    assert sum(r.purged for r in _race(ret, hide_at + GRACE * 2)) == len(ids)
    assert count(ret, Message, Message.id.in_(ids)) == 0
    with purge_lock(ret.svc) as held:
        assert held is not None
        assert purge(ret, utcnow()).skipped is True
    assert purge(ret, utcnow()).skipped is False  # released


def test_the_beat_task_runs_on_the_worker_and_the_cli_prints_what_it_did(
    api: Api, ret: Stack
) -> None:
    producer = ret.svc.tasks  # built from the same Settings as the worker's app
    entry = producer.conf.beat_schedule["retention-purge"]
    assert entry["task"] == "tasks.retention.purge" and entry["schedule"] == 600
    route = producer.amqp.router.route({}, "tasks.retention.purge")
    assert route["queue"].name == "maintenance"
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    set_policy(api, a, cid, retention_seconds=1)
    mid = api.send(a, cid, "short lived")["id"]
    wait_delivered(ret, b, [mid])
    time.sleep(1.1)
    ret.svc.tasks.send_task("tasks.retention.purge")

    def hidden() -> bool:
        with ret.svc.Session() as s:
            row = s.get(Message, mid)
            return row is not None and row.expired_at is not None

    wait_for(hidden, 30, 0.1, "the worker's purge to hide the message")
    wait_for(lambda: not ret.redis.exists(LOCK_KEY), 30, 0.1, "the purge to finish")
    runner = ret.app.test_cli_runner()
    out = runner.invoke(args=["retention", "run"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("hid ") and "tombstone" in out.output
    with purge_lock(ret.svc) as held:
        assert held is not None
        busy = runner.invoke(args=["retention", "run"])
    assert busy.exit_code == 1 and "another purge" in busy.output
