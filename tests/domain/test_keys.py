"""Encryption at rest: envelope keys, master-key rotation with re-encryption via a real worker,
the rotation job's claim, and signed links across a master-key rotation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from core.crypto import MasterKeys, MissingKeyError, open_sealed, seal
from core.ids import utcnow
from domain import outbox
from domain.jobs import STALE_CLAIM
from domain.rotation import ROTATION
from domain.signed_urls import ExpiredLink, InvalidLink, UrlSigner, expiry
from models import DataKey, Job, Message, Outbox
from tests.conftest import RedisServer, Stack, _make_stack, wait_for
from tests.factories import Api, uid, wait_delivered


def test_sealed_text_is_bound_to_its_row_and_key() -> None:
    key = bytes(range(32))
    blob = seal(key, b"hello", b"msg:1")
    assert open_sealed(key, blob, b"msg:1") == b"hello"
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises InvalidTag
        open_sealed(key, blob, b"msg:2")  # copied to another row: does not open
    assert blob.count(b"hello") == 0


def test_master_keys_parse_and_reject_bad_material(tmp_path: Path) -> None:
    entry = MasterKeys.generate_entry("k2")
    keys = MasterKeys.parse(f"{entry},{MasterKeys.generate_entry('k1')}")
    assert keys.current_kid == "k2" and len(keys.keys) == 2
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKeys.parse("k1:c2hvcnQ")
    with pytest.raises(MissingKeyError):
        keys.get("k9")
    generated = MasterKeys.load("", tmp_path)
    assert MasterKeys.load("", tmp_path) == generated  # generated once, then reused
    assert (tmp_path / "keys" / "master-keys.json").stat().st_mode & 0o077 == 0


@pytest.fixture
def rotation_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    """A stack of its own (SQLite, Redis db 5): rotation changes keys the others rely on."""
    st = _make_stack("rotation", f"sqlite:///{tmp_path / 'parley.db'}", 5, redis_server, tmp_path)
    yield st
    st.worker.stop()
    st.svc.engine.dispose()


def test_rotation_rewraps_and_reencrypts_while_reads_and_writes_continue(
    rotation_stack: Stack,
) -> None:
    st = rotation_stack
    api = Api(st)
    st.worker.start(st.app)
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    ids = [api.send(a, cid, f"before rotation {i}")["id"] for i in range(30)]
    wait_delivered(st, b, ids)
    api.patch(f"/v1/messages/{ids[0]}", user=a, json={"text": "edited before rotation"})
    old = json.loads((st.data_dir / "keys" / "master-keys.json").read_text())
    new_entry = MasterKeys.generate_entry("k-new")
    spec = ",".join([new_entry] + [f"{e['kid']}:{e['key']}" for e in old])
    # every node gets the new key list, newest first: the worker restarts with it, and so does
    # this process's keyring
    st.worker.stop()
    st.worker.env["PARLEY_MASTER_KEYS"] = spec
    st.svc.keyring.master = MasterKeys.parse(spec)
    st.worker.start(st.app)
    with st.svc.Session() as s:
        old_keys = set(s.scalars(select(Message.key_id).where(Message.conversation_id == cid)))
    with st.app.app_context():
        from domain.rotation import start_rotation

        job_id = start_rotation(st.svc, reencrypt=True, actor="test")
    during = [api.send(b, cid, f"during rotation {i}")["id"] for i in range(10)]

    def finished() -> Job | None:
        with st.svc.Session() as s:
            job = s.get(Job, job_id)
            return job if job is not None and job.state == "done" else None

    job = wait_for(finished, 60, 0.2, "the rotation job")
    assert job.total >= 30 and job.done >= 30
    wait_delivered(st, a, during)
    with st.svc.Session() as s:
        kids = set(s.scalars(select(DataKey.master_kid)))
        assert kids == {"k-new"}
        new_keys = set(s.scalars(select(Message.key_id).where(Message.conversation_id == cid)))
        assert new_keys.isdisjoint(old_keys)
    texts = [
        m["text"]
        for m in api.get(f"/v1/conversations/{cid}/messages?limit=200", user=b).get_json()["items"]
    ]
    assert texts[0] == "edited before rotation"
    assert texts[1:30] == [f"before rotation {i}" for i in range(1, 30)]
    assert texts[30:] == [f"during rotation {i}" for i in range(10)]
    # the old master key alone can no longer open any data key
    st.svc.keyring.master = MasterKeys.parse(",".join(f"{e['kid']}:{e['key']}" for e in old))
    for dk in list(new_keys)[:1]:
        st.svc.keyring.forget(dk)
        with pytest.raises(MissingKeyError):
            st.svc.keyring.data_key(dk)


def test_a_rotation_job_held_by_a_live_worker_runs_once_and_a_stale_claim_is_taken_over(
    live: Stack,
) -> None:
    """A rotation job another worker is running (its claim fresh) is left alone by a duplicate
    delivery; once that worker stopped reporting progress for STALE_CLAIM, a delivery takes the
    job over and finishes it."""
    with live.app.app_context(), live.svc.Session.begin() as s:
        job = Job(kind=ROTATION.name, params={"reencrypt": False}, created_by="test")
        job.state = "running"  # as if a worker had claimed it a moment ago
        s.add(job)
        s.flush()
        job_id = job.id
        outbox.add(s, ROTATION.task, [job_id], ref_id=job_id)  # sent after the commit

    def delivered() -> bool:
        with live.svc.Session() as s:
            row = s.scalar(select(Outbox).where(Outbox.ref_id == job_id))
            return row is not None and row.done_at is not None

    wait_for(delivered, 30, 0.1, "the worker to receive the rotation job")
    with live.svc.Session() as s:
        held = s.get(Job, job_id)
        assert held is not None
        assert (held.state, held.done, held.total) == ("running", 0, 0)

    with live.svc.Session.begin() as s:  # the holder died: no progress for STALE_CLAIM
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(updated_at=utcnow() - STALE_CLAIM - timedelta(seconds=1))
        )
    live.svc.tasks.send_task(ROTATION.task, [job_id])

    def finished() -> Job | None:
        with live.svc.Session() as s:
            row = s.get(Job, job_id)
            return row if row is not None and row.state == "done" else None

    assert wait_for(finished, 30, 0.1, "the stale rotation job to be taken over").error is None


def test_signed_links_outlive_a_master_key_rotation_until_the_old_key_is_dropped() -> None:
    """The newest key signs and every listed key verifies: a link signed before a rotation
    still works after it, and stops working once its key leaves the list."""
    old, new = bytes(range(32)), bytes(range(1, 33))
    expires = expiry(300)
    before = UrlSigner([old], "export").sign("job-1", expires=expires)
    rotated = UrlSigner([new, old], "export")
    rotated.check("job-1", expires=expires, sig=before)
    after = rotated.sign("job-1", expires=expires)
    assert after != before  # signed with the newest key...
    UrlSigner([new], "export").check("job-1", expires=expires, sig=after)
    with pytest.raises(InvalidLink):  # ...which the old key alone does not verify
        UrlSigner([old], "export").check("job-1", expires=expires, sig=after)
    with pytest.raises(InvalidLink):  # the old key retired: its links end
        UrlSigner([new], "export").check("job-1", expires=expires, sig=before)


def test_a_signed_link_grants_exactly_what_it_names_until_it_expires() -> None:
    signer = UrlSigner([bytes(range(32))], "export")
    expires = expiry(300)
    sig = signer.sign("job-1", 7, expires=expires)
    assert signer.query("job-1", 7, expires=expires) == f"exp={expires}&sig={sig}"
    signer.check("job-1", 7, expires=expires, sig=sig)
    for grant, exp, bad in [
        (("job-2", 7), expires, sig),  # another job
        (("job-1", 8), expires, sig),  # another value
        (("job-1", 7), expires + 3600, sig),  # a longer life
        (("job-1", 7), expires, sig + "=="),  # the same signature, padded
        (("job-1", 7), expires, "é" * 10),  # not base64url at all
    ]:
        with pytest.raises(InvalidLink):
            signer.check(*grant, expires=exp, sig=bad)
    with pytest.raises(InvalidLink):  # another purpose's key
        UrlSigner([bytes(range(32))], "attachment").check("job-1", 7, expires=expires, sig=sig)
    with pytest.raises(ExpiredLink):
        signer.check("job-1", 7, expires=expires, sig=sig, now=utcnow() + timedelta(seconds=301))
