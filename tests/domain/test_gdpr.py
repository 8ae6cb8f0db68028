"""GDPR export and erasure, and deleting a conversation by crypto-shredding (#8), through the
API and a real worker on SQLite and PostgreSQL.

These only touch the users and conversations they create, so they share the suite's stack.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.crypto import Keyring, MissingKeyError
from core.ids import utcnow
from domain.gdpr import stored_exports
from domain.messages import edit_aad, message_aad
from domain.retention.conversation_purge import purge_conversation
from domain.retention.key_forgetter import KeyForgetter
from models import (
    AuditEntry,
    Base,
    Conversation,
    DataKey,
    Message,
    MessageEdit,
    Outbox,
    Participant,
    User,
)
from tests.conftest import Stack, wait_for
from tests.domain.test_retention import stored, upload_text
from tests.factories import Api, stream_events, uid, wait_delivered


def job_done(api: Api, job_id: str, **who: Any) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/v1/privacy/jobs/{job_id}", **who).get_json()
        assert body["state"] != "failed", body
        return body if body["state"] == "done" else None

    found: dict[str, Any] = wait_for(finished, 60, 0.1, f"job {job_id}")
    return found


def lines(zf: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in zf.read(name).decode().splitlines()]


def all_ciphertexts(session: Session) -> list[tuple[str, str | None, bytes | None, str]]:
    rows = [
        (m.id, m.key_id, m.text_ct, message_aad(m.id))
        for m in session.scalars(select(Message).where(Message.text_ct.is_not(None)))
    ]
    rows += [
        (e.message_id, e.key_id, e.text_ct, edit_aad(e.message_id))
        for e in session.scalars(select(MessageEdit).where(MessageEdit.text_ct.is_not(None)))
    ]
    return rows


def rows_naming(st: Stack, needle: str) -> list[str]:
    """Every row of every table whose values mention `needle` (as text)."""
    hits = []
    with st.svc.Session() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)):
                if any(needle in str(value) for value in row):
                    hits.append(f"{table.name}: {row}")
    return hits


def test_export_is_a_zip_of_the_users_data_sealed_at_rest_behind_a_signed_url(
    api: Api, live: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    file_body = b"my private export notes"
    aid = upload_text(api, a, cid, file_body, "plans.txt")
    mine = [
        api.send(a, cid, "first of mine"),
        api.send(a, cid, None, type="file", attachments=[aid]),
    ]
    theirs = api.send(b, cid, "words of the other user")
    wait_delivered(live, a, [m["id"] for m in mine] + [theirs["id"]])
    api.patch(f"/v1/messages/{mine[0]['id']}", user=a, json={"text": "first of mine, edited"})
    api.put(f"/v1/messages/{theirs['id']}/reactions/🎉", user=a)
    api.post(f"/v1/messages/{theirs['id']}/reports", user=a, json={"reason": "spam", "note": "n"})
    api.post(f"/v1/conversations/{cid}/read", user=a, json={"seq": 3})

    assert api.post(f"/v1/privacy/users/{a}/export", user=b).status_code == 403
    assert api.post(f"/v1/privacy/users/{uid()}/export", key=api.api_key()).status_code == 404
    resp = api.post(f"/v1/privacy/users/{a}/export", user=a)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    assert resp.get_json()["state"] == "queued"
    again = api.post(f"/v1/privacy/users/{a}/export", key=api.api_key()).get_json()
    if again["id"] != job_id:  # one export at a time: a new one only once the first is done
        assert api.get(f"/v1/privacy/jobs/{job_id}", user=a).get_json()["state"] == "done"
    assert api.get(f"/v1/privacy/jobs/{job_id}", user=b).status_code == 404
    job = job_done(api, job_id, user=a)
    assert job["done"] == job["total"] >= 6 and job["size"] > 0
    assert api.get(f"/v1/privacy/jobs/{job_id}", roles=("admin",), user=uid()).status_code == 200

    # at rest: sealed, no zip structure and none of the text or the file readable
    with live.app.app_context():
        from domain.attachments import storage_for

        raw = b"".join(storage_for(live.svc).open(stored_exports.export_object(job_id)))
    for plain in (b"PK\x03\x04", b"first of mine", file_body, a.encode(), b"messages.jsonl"):
        assert plain not in raw

    download = api.client.get(job["download_url"])  # no bearer: the signature is the credential
    assert download.status_code == 200, download.get_json()
    assert download.mimetype == "application/zip"
    assert int(download.headers["Content-Length"]) == len(download.data) == job["size"]
    zf = zipfile.ZipFile(io.BytesIO(download.data))
    assert zf.testzip() is None
    assert json.loads(zf.read("profile.json"))["user_id"] == a
    msgs = {m["id"]: m for m in lines(zf, "messages.jsonl")}
    assert set(msgs) == {m["id"] for m in mine}  # theirs is not part of a's data
    first = msgs[mine[0]["id"]]
    assert first["text"] == "first of mine, edited"
    assert [e["text"] for e in first["edits"]] == ["first of mine"]
    assert msgs[mine[1]["id"]]["attachments"] == [aid]
    [conv] = lines(zf, "conversations.jsonl")
    assert (conv["conversation_id"], conv["read_seq"], conv["role"]) == (cid, 3, "owner")
    assert sorted(conv["members"]) == sorted([a, b])
    assert [r["emoji"] for r in lines(zf, "reactions.jsonl")] == ["🎉"]
    assert [(r["reason"], r["note"]) for r in lines(zf, "reports.jsonl")] == [("spam", "n")]
    [att] = lines(zf, "attachments.jsonl")
    assert att["filename"] == "plans.txt" and zf.read(att["file"]) == file_body
    assert b"words of the other user" not in download.data

    # the URL is signed and short-lived
    parts = urlsplit(job["download_url"])
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    forged = f"{parts.path}?exp={int(q['exp']) + 3600}&sig={q['sig']}"
    assert api.client.get(forged).status_code == 403
    expired_at = int(utcnow().timestamp()) - 1
    with live.app.app_context():
        stale = stored_exports.download_url(live.svc, job_id, expired_at)
    assert api.client.get(stale).status_code == 403
    assert api.client.get(f"{parts.path}?exp={q['exp']}").status_code == 422

    # after PARLEY_EXPORT_KEEP_S the zip and its key are gone
    key_id = job_key(live, job_id)
    with live.app.app_context():
        assert stored_exports.expire_exports(live.svc, utcnow() + timedelta(days=2)) >= 1
        assert not storage_for(live.svc).exists(stored_exports.export_object(job_id))
    with live.svc.Session() as s:
        assert s.get(DataKey, key_id) is None
    assert api.get(f"/v1/privacy/jobs/{job_id}", user=a).get_json()["state"] == "expired"
    assert api.client.get(job["download_url"]).status_code == 404


def job_key(st: Stack, job_id: str) -> str:
    from models import Job

    with st.svc.Session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return str(job.result["key_id"])


def test_erasure_leaves_no_plaintext_and_no_trace_of_the_user(api: Api, live: Stack) -> None:
    a, b, c = uid("erase"), uid(), uid()
    with live.svc.Session() as s:  # the outbox rows before this test's are other tests' own
        outbox_before = s.scalar(select(func.coalesce(func.max(Outbox.id), 0)))
    group = api.conversation(a, b, c)
    direct = api.conversation(a, b, ctype="direct")
    aid = upload_text(api, a, group, b"attached by the erased user")
    texts = ["secret plan alpha", "secret plan beta"]
    mine = [api.send(a, group, t) for t in texts]
    mine.append(api.send(a, group, None, type="file", attachments=[aid]))
    mine.append(api.send(a, direct, "direct words from a"))
    others = [api.send(b, group, "kept words from b"), api.send(c, group, "kept words from c")]
    wait_delivered(live, b, [m["id"] for m in mine + others])
    api.patch(f"/v1/messages/{mine[0]['id']}", user=a, json={"text": "secret plan gamma"})
    api.put(f"/v1/messages/{others[0]['id']}/reactions/👍", user=a)
    api.post(f"/v1/messages/{others[1]['id']}/reports", user=a, json={"reason": "spam"})
    api.put(f"/v1/messages/{others[0]['id']}/pin", user=a)
    api.post(f"/v1/conversations/{group}/read", user=a, json={"seq": 5})
    export = api.post(f"/v1/privacy/users/{a}/export", user=a).get_json()["id"]
    job_done(api, export, user=a)
    before = api.get(f"/v1/conversations/{group}", user=b).get_json()
    with live.svc.Session() as s:
        group_keys = set(s.scalars(select(DataKey.id).where(DataKey.conversation_id == group)))

    assert api.post(f"/v1/privacy/users/{a}/erase", user=a).status_code == 403
    assert api.post(f"/v1/privacy/users/{a}/erase", user=b, roles=("moderator",)).status_code == 403
    key = api.api_key()
    resp = api.post(f"/v1/privacy/users/{a}/erase", key=key, json={"reason": "user request"})
    assert resp.status_code == 202, resp.get_json()
    job = job_done(api, resp.get_json()["id"], key=key)
    pseudo = job["user_id"]
    assert pseudo.startswith("erased-") and job["result"]["messages"] == 4

    # others keep a coherent history: tombstones under the pseudonym, seqs and counts intact
    seen = api.get(f"/v1/conversations/{group}/messages", user=b).get_json()["items"]
    assert [m["seq"] for m in seen] == [1, 2, 3, 4, 5]
    for m in seen[:3]:
        assert (m["sender_id"], m["text"], m["deleted"], m["attachments"]) == (
            pseudo,
            None,
            True,
            [],
        )
    assert [m["text"] for m in seen[3:]] == ["kept words from b", "kept words from c"]
    after = api.get(f"/v1/conversations/{group}", user=b).get_json()
    assert after["last_seq"] == before["last_seq"]
    assert (before["unread_count"], after["unread_count"]) == (4, 1)  # tombstones are not unread
    assert {m["user_id"] for m in after["members"]} == {b, c}
    assert [m["role"] for m in after["members"]].count("owner") == 1  # handed over
    assert seen[3]["reactions"] == [] and seen[3]["pinned"] is True
    events = stream_events(live, b, "conversation.updated")
    assert {"conversation_id": group, "change": "history"} in [e["data"] for e in events]

    # no plaintext of theirs left: nothing in the database opens to their words
    with live.app.app_context(), live.svc.Session() as s:
        for _mid, key_id, blob, aad in all_ciphertexts(s):
            if key_id in group_keys and blob is not None:
                opened = live.svc.keyring.open_text(key_id, blob, aad)
                assert "secret plan" not in opened and "direct words" not in opened
        assert s.get(User, a) is None
        assert (
            s.scalar(
                select(func.count())
                .select_from(MessageEdit)
                .where(MessageEdit.message_id.in_([m["id"] for m in mine]))
            )
            == 0
        )
        entry = s.scalar(
            select(AuditEntry).where(
                AuditEntry.action == "user.erase", AuditEntry.target_id == pseudo
            )
        )
        assert entry is not None and entry.actor.startswith("apikey:")
    assert not [k for k in stored(live, f"attachments/{group}/") if aid in k]
    assert not stored(live, stored_exports.export_object(export))
    assert not live.redis.exists(f"parley:stream:{a}")

    # and no row anywhere names them (once the events this test queued before erasure are
    # sent; a row another test left for the sweeper is not theirs to wait for)
    def settled() -> bool:
        with live.svc.Session() as s:
            return not s.scalar(
                select(func.count())
                .select_from(Outbox)
                .where(Outbox.done_at.is_(None), Outbox.id > outbox_before)
            )

    wait_for(settled, 30, 0.1, "the outbox to drain")
    assert rows_naming(live, a) == []
    assert (
        api.post(f"/v1/conversations/{direct}/messages", user=b, json={"text": "hi"}).status_code
        == 202
    )


def test_deleting_a_conversation_shreds_its_keys_at_once_everywhere_then_purges_it(
    api: Api, live: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    kept = api.conversation(a, b)
    aid = upload_text(api, a, cid, b"doomed file")
    sent = [
        api.send(a, cid, "doomed words"),
        api.send(a, cid, None, type="file", attachments=[aid]),
    ]
    other = api.send(a, kept, "surviving words")
    wait_delivered(live, b, [m["id"] for m in sent] + [other["id"]])
    with live.svc.Session() as s:
        row = s.get(Message, sent[0]["id"])
        assert row is not None and row.key_id is not None and row.text_ct is not None
        key_id, blob = row.key_id, row.text_ct
    aad = message_aad(sent[0]["id"])
    assert live.svc.keyring.open_text(key_id, blob, aad) == "doomed words"  # cached here

    # "another process": its own key cache, warmed, following shreds through Redis
    def loader(dk_id: str) -> tuple[str, bytes] | None:
        with live.svc.Session() as s:
            dk = s.get(DataKey, dk_id)
            return (dk.master_kid, dk.wrapped) if dk else None

    elsewhere = replace(live.svc, keyring=Keyring(live.svc.keyring.master, loader))
    assert elsewhere.keyring.open_text(key_id, blob, aad) == "doomed words"
    forgetter = KeyForgetter(elsewhere, poll_s=0.1).start()
    try:
        assert forgetter.ready.wait(10)
        assert api.delete(f"/v1/conversations/{cid}", user=b).status_code == 403
        resp = api.delete(f"/v1/conversations/{cid}", user=a)
        assert resp.status_code == 202, resp.get_json()
        job_id = resp.get_json()["id"]

        # at once: the raw ciphertext opens nowhere, not even in a process that had the key
        with pytest.raises(MissingKeyError):
            live.svc.keyring.open_text(key_id, blob, aad)

        def forgotten() -> bool:
            try:
                elsewhere.keyring.open_text(key_id, blob, aad)
            except MissingKeyError:
                return True
            return False

        wait_for(forgotten, 10, 0.05, "the other process to forget the shredded key")
    finally:
        forgetter.stop()
    assert api.get(f"/v1/conversations/{cid}", user=a).status_code == 404
    assert api.get(f"/v1/messages/{sent[0]['id']}", user=b).status_code == 404
    listed = api.get("/v1/conversations", user=b).get_json()["items"]
    assert cid not in [c["id"] for c in listed] and kept in [c["id"] for c in listed]
    assert any(
        e["data"] == {"conversation_id": cid, "change": "deleted"}
        for e in stream_events(live, b, "conversation.updated")
    )

    job = job_done(api, job_id, user=a)
    assert job["kind"] == "conversation_delete" and job["done"] == job["total"] >= 3
    with live.svc.Session() as s:
        assert s.get(Conversation, cid) is None
        assert (
            s.scalar(
                select(func.count()).select_from(Message).where(Message.conversation_id == cid)
            )
            == 0
        )
        assert (
            s.scalar(
                select(func.count())
                .select_from(Participant)
                .where(Participant.conversation_id == cid)
            )
            == 0
        )
        assert s.get(DataKey, key_id) is None
    assert stored(live, f"attachments/{cid}/") == set()
    assert api.get(f"/v1/messages/{other['id']}", user=b).get_json()["text"] == "surviving words"
    with live.app.app_context():  # running the purge again finds nothing and does not fail
        assert purge_conversation(live.svc, cid, lambda n: None) == 0
