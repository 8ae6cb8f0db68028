"""Search over sealed messages (#15): the blind index on real SQLite and PostgreSQL, written by
the real pipeline (a Celery worker), and GET /v1/search/messages with every rule it keeps."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from core.crypto import MissingKeyError
from domain.retention.deleting import delete_messages
from domain.search import index, postings, stage
from models import Conversation, Message, SearchConversation, SearchPostings
from tests.conftest import Stack, wait_for
from tests.factories import Api, plaintext_at_rest, uid, wait_delivered


def word(prefix: str = "zq") -> str:
    """A word no other message of the session holds (letters only: one search term)."""
    return prefix + "".join(chr(ord("a") + int(c, 16) % 26) for c in uuid.uuid4().hex[:10])


def search(api: Api, user: str | None = None, **params: Any) -> Any:
    kw: dict[str, Any] = {"user": user} if user is not None else {}
    if "key" in params:
        kw["key"] = params.pop("key")
    return api.get("/v1/search/messages", query_string=params, **kw)


def hits(api: Api, user: str, q: str, **params: Any) -> list[dict[str, Any]]:
    resp = search(api, user, q=q, **params)
    assert resp.status_code == 200, resp.get_json()
    items: list[dict[str, Any]] = resp.get_json()["items"]
    return items


def wait_found(api: Api, user: str, q: str, n: int = 1, **params: Any) -> list[dict[str, Any]]:
    """Hits once the index stage has run for them (the pipeline is asynchronous)."""
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = hits(api, user, q, **params)
        return len(found) >= n

    wait_for(ready, 30, what=f"{n} hit(s) for {q!r}")
    return found


def stored(stack: Stack, cid: str, times: bool = False) -> dict[tuple[int, int], bytes]:
    """The conversation's postings rows as stored: (bucket, segment) -> data; with `times`,
    its times rows instead."""
    with stack.svc.Session() as s:
        return {
            (b, g): d
            for b, g, d in s.execute(
                select(SearchPostings.bucket, SearchPostings.segment, SearchPostings.data)
                .join(SearchConversation, SearchConversation.ref == SearchPostings.ref)
                .where(SearchConversation.conversation_id == cid)
            )
            if (b == postings.TIMES) == times
        }


def indexed(stack: Stack, cid: str) -> dict[int, int]:
    """How many tokens the index holds for each seq of the conversation."""
    counts: dict[int, int] = {}
    for (_, g), data in stored(stack, cid).items():
        for offsets in postings.decode(data).values():
            for o in offsets:
                seq = g * postings.SEGMENT_SEQS + o
                counts[seq] = counts.get(seq, 0) + 1
    return counts


def tokens_of(stack: Stack, cid: str) -> int:
    return sum(indexed(stack, cid).values())


def test_a_canary_word_is_found_by_search_and_stored_nowhere_in_plaintext(
    api: Api, live: Stack
) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    canary = word("canary")
    mid = api.send(a, cid, f"the parcel {canary} arrives Saturday")["id"]
    wait_delivered(live, b, [mid])
    found = wait_found(api, b, canary)
    assert [h["message"]["id"] for h in found] == [mid]
    text_ = found[0]["message"]["text"]
    (start, end), *_ = found[0]["highlights"]
    assert text_[start:end] == canary
    assert tokens_of(live, cid) > 0
    assert plaintext_at_rest(live, canary.encode()) == []


def test_a_non_member_never_gets_a_hit_and_an_api_key_names_a_conversation(
    api: Api, live: Stack
) -> None:
    a, b, outsider = uid(), uid(), uid()
    cid = api.conversation(a, b)
    secret = word()
    mid = api.send(a, cid, f"meet at {secret}")["id"]
    wait_found(api, b, secret)
    api.conversation(outsider, uid())  # the outsider has conversations of their own
    assert hits(api, outsider, secret) == []
    assert search(api, outsider, q=secret, conversation_id=cid).status_code == 404
    key = api.api_key()
    no_scope = search(api, key=key, q=secret)
    assert no_scope.status_code == 422 and "conversation_id" in no_scope.get_json()["errors"]
    scoped = search(api, key=key, q=secret, conversation_id=cid)
    assert [h["message"]["id"] for h in scoped.get_json()["items"]] == [mid]


def test_a_deleted_conversation_gives_no_hits(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    secret = word()
    mid = api.send(a, cid, f"shred {secret} please")["id"]
    wait_found(api, a, secret)
    assert api.delete(f"/v1/conversations/{cid}", user=a).status_code in (200, 202)
    assert hits(api, a, secret) == []
    assert hits(api, b, secret) == []
    wait_for(lambda: stored(live, cid) == {}, 30, what="the conversation purge")
    stage.index_messages(live.svc, cid, [mid])  # a late stage run indexes nothing
    assert stored(live, cid) == {}


def test_a_shredded_data_key_takes_its_cached_search_key_with_it(api: Api, live: Stack) -> None:
    """The search key derived from a data key is cached in the keyring beside it; deleting
    the conversation shreds the data key and the derived key is forgotten at once, so the
    process cannot hash a query (or index a late message) under it any more."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    secret = word()
    api.send(a, cid, f"derived {secret}")
    wait_found(api, a, secret)
    with live.svc.Session() as s:
        dk = s.scalar(select(Conversation.data_key_id).where(Conversation.id == cid))
    assert dk is not None
    search_key = index.index_key(live.svc, dk)
    assert index.index_key(live.svc, dk) == search_key  # cached: the same key again
    assert api.delete(f"/v1/conversations/{cid}", user=a).status_code in (200, 202)
    with pytest.raises(MissingKeyError):
        index.index_key(live.svc, dk)


def test_edits_and_deletes_are_reflected_at_once(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    before, after = word(), word()
    mid = api.send(a, cid, f"first {before}")["id"]
    wait_found(api, b, before)
    resp = api.patch(f"/v1/messages/{mid}", user=a, json={"text": f"second {after}"})
    assert resp.status_code == 200, resp.get_json()
    assert hits(api, b, before) == []
    assert [h["message"]["id"] for h in hits(api, b, after)] == [mid]
    assert api.delete(f"/v1/messages/{mid}", user=a).status_code in (200, 204)
    assert hits(api, b, after) == []
    assert tokens_of(live, cid) == 0


def test_purging_a_message_removes_its_index_rows(api: Api, live: Stack) -> None:
    """The retention purge deletes message rows (domain/retention/deleting.py): the foreign key
    cascades to their tokens."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    secret = word()
    mid = api.send(a, cid, f"old news {secret}")["id"]
    wait_found(api, b, secret)
    assert tokens_of(live, cid) > 0
    with live.svc.Session.begin() as s:
        assert delete_messages(live.svc, s, [mid])[0] == 1
    assert tokens_of(live, cid) == 0
    assert hits(api, b, secret) == []


def test_erasing_a_user_removes_the_index_rows_of_their_messages(api: Api, live: Stack) -> None:
    """Erasure keeps tombstones (the rows stay for the others' history), not their tokens."""
    a, b = uid("erase"), uid()
    cid = api.conversation(a, b)
    mine, theirs = word(), word()
    api.send(a, cid, f"erase {mine}")
    api.send(b, cid, f"keep {theirs}")
    wait_found(api, b, theirs)
    wait_found(api, b, mine)
    key = api.api_key()
    resp = api.post(f"/v1/privacy/users/{a}/erase", key=key, json={"reason": "user request"})
    assert resp.status_code == 202, resp.get_json()
    wait_for(lambda: hits(api, b, mine) == [], 60, what="the erasure")
    assert set(indexed(live, cid)) == {2}  # seq 1 was theirs
    assert [h["message"]["sender_id"] for h in hits(api, b, theirs)] == [b]


def test_prefix_and_phrase_search_are_verified_in_memory(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    tag = word()
    one = api.send(a, cid, f"{tag} the delivery is on Saturday morning")["id"]
    two = api.send(a, cid, f"{tag} morning, not Saturday: delivering later")["id"]
    three = api.send(a, cid, f"{tag} the deli on saturday")["id"]
    wait_found(api, b, tag, 3)
    prefix = hits(api, b, f"{tag} deliv*")
    assert {h["message"]["id"] for h in prefix} == {one, two}  # "deli" is not "deliv…"
    for h in prefix:
        for start, end in h["highlights"]:
            assert h["message"]["text"][start:end].lower().startswith(("deliv", tag[:5]))
    longer = hits(api, b, f"{tag} delivering*")  # longer than any indexed prefix
    assert [h["message"]["id"] for h in longer] == [two]
    phrase = hits(api, b, f'{tag} "saturday morning"')
    assert [h["message"]["id"] for h in phrase] == [one]
    h = phrase[0]
    assert [h["message"]["text"][s:e] for s, e in h["highlights"]][-1] == "Saturday morning"
    assert {x["message"]["id"] for x in hits(api, b, f"{tag} SATURDAY")} == {one, two, three}


def test_masked_and_held_text_is_searched_as_the_caller_sees_it(api: Api, live: Stack) -> None:
    """Recipients never find a held message; the sender does (support policy: e-mails held)."""
    a, b = uid(), uid()
    cid = api.conversation(a, b, ctype="support")
    secret = word()
    held = api.send(a, cid, f"{secret} write to jane.doe@example.com")["id"]
    found = wait_found(api, a, secret)
    assert found[0]["message"]["id"] == held and found[0]["message"]["state"] == "held"
    assert hits(api, b, secret) == []


def test_filters_narrow_the_hits(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    other = api.conversation(a, uid())
    tag = word()
    mine = api.send(a, cid, f"{tag} from a")["id"]
    theirs = api.send(b, cid, f"{tag} from b")["id"]
    elsewhere = api.send(a, other, f"{tag} elsewhere")["id"]
    wait_found(api, a, tag, 3)
    assert {h["message"]["id"] for h in hits(api, a, tag, sender_id=b)} == {theirs}
    assert {h["message"]["id"] for h in hits(api, a, tag, conversation_id=cid)} == {mine, theirs}
    assert hits(api, a, tag, has_attachments="true") == []
    assert len(hits(api, a, tag, has_attachments="false")) == 3
    assert hits(api, a, tag, since="2999-01-01T00:00:00Z") == []
    assert hits(api, a, tag, until="2000-01-01T00:00:00Z") == []
    assert elsewhere in {h["message"]["id"] for h in hits(api, a, tag)}


def test_pages_are_newest_first_without_repeats(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    tag = word()
    sent = [api.send(a, cid, f"{tag} number {i}")["id"] for i in range(5)]
    wait_found(api, b, tag, 5)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = search(api, b, q=tag, **params).get_json()
        seen += [h["message"]["id"] for h in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(sent))


def test_bad_queries_are_422_problems(api: Api, live: Stack) -> None:
    a = uid()
    api.conversation(a, uid())
    for q in ("", "   ", "x" * 201, " ".join(f"w{i}x" for i in range(9)), "the", "ab*"):
        resp = search(api, a, q=q)
        assert resp.status_code == 422, (q, resp.get_json())
        assert resp.content_type == "application/problem+json"
        assert "q" in resp.get_json()["errors"]
    assert search(api, a).status_code == 422  # q is required
    assert search(api, a, q="hello", cursor="not-a-cursor").status_code == 422


def test_conversations_list_matches_subject_or_member_name(api: Api, live: Stack) -> None:
    """GET /v1/conversations?q= (subjects and names are plaintext today: a LIKE, escaped)."""
    from models import User

    a, b, c = uid(), uid(), uid()
    tag = word()
    by_subject = api.conversation(a, b, subject=f"Booking {tag.upper()} 42")
    by_name = api.conversation(a, c)
    api.conversation(a, uid(), subject="something else")
    with live.svc.Session.begin() as s:
        user = s.get(User, c)
        assert user is not None
        user.name = f"Carla {tag}"
    listed = api.get("/v1/conversations", user=a, query_string={"q": tag}).get_json()
    assert {x["id"] for x in listed["items"]} == {by_subject, by_name}
    none = api.get("/v1/conversations", user=a, query_string={"q": "%"}).get_json()
    assert none["items"] == []  # a wildcard is matched literally
    assert api.get("/v1/conversations", user=a, query_string={"q": ""}).status_code == 422


def test_two_index_runs_for_one_conversation_at_once_keep_both_messages(
    api: Api, live: Stack
) -> None:
    """Two writers of one conversation's postings rows: the second waits for the first's lock
    (its rows are read after the first commits), so neither loses the other's postings."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    one, two = word(), word()
    first = api.send(a, cid, f"alpha {one}")
    second = api.send(a, cid, f"beta {two}")
    wait_found(api, b, two)
    wait_found(api, b, one)
    with live.svc.Session.begin() as s:
        index.forget(s, cid, [first["seq"], second["seq"]])
    assert tokens_of(live, cid) == 0
    started = threading.Event()
    errors: list[BaseException] = []

    def slow_first() -> None:
        try:
            with live.svc.Session.begin() as s:
                stage.index_many(live.svc, s, {cid: [first["id"]]})
                started.set()
                time.sleep(0.5)  # the other run starts while this one holds the lock
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            started.set()

    def then_second() -> None:
        started.wait(10)
        try:
            stage.index_messages(live.svc, cid, [second["id"]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=slow_first), threading.Thread(target=then_second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert set(indexed(live, cid)) == {first["seq"], second["seq"]}
    assert [h["message"]["id"] for h in hits(api, b, one)] == [first["id"]]
    assert [h["message"]["id"] for h in hits(api, b, two)] == [second["id"]]


def test_running_the_index_stage_again_leaves_the_same_rows(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    tag = word()
    sent = [api.send(a, cid, f"{tag} again and again {i} {word()}") for i in range(3)]
    wait_found(api, b, tag, 3)
    before = stored(live, cid), stored(live, cid, times=True)
    assert all(before)
    stage.index_messages(live.svc, cid, [m["id"] for m in sent])
    stage.index_messages(live.svc, cid, [sent[1]["id"]])
    assert (stored(live, cid), stored(live, cid, times=True)) == before


def test_new_postings_go_to_the_tail_row_and_fold_into_the_buckets_when_it_fills(
    api: Api, live: Stack
) -> None:
    """Indexing a message rewrites its segment's tail row, not a row per bucket; the tail is
    folded into the bucket rows once it holds TAIL_MESSAGES messages. Every message stays
    found, whichever row holds it."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    tag = word()
    n = postings.TAIL_MESSAGES + 3
    sent = [api.send(a, cid, f"{tag} tail {i} {word()}") for i in range(n)]
    found = wait_found(api, b, tag, n, limit=50)
    assert {h["message"]["id"] for h in found} == {m["id"] for m in sent}
    rows = stored(live, cid)
    tail_row = rows.get((postings.TAIL, 0))  # gone if the last batch filled it
    tail = postings.held(postings.decode(tail_row)) if tail_row is not None else set()
    in_buckets = set().union(
        *(postings.held(postings.decode(d)) for (bk, _), d in rows.items() if bk < postings.BUCKETS)
    )
    assert len(tail) < postings.TAIL_MESSAGES  # folded once it was full
    assert len(in_buckets) >= postings.TAIL_MESSAGES
    assert not tail & in_buckets  # a message is in one place
    assert set(indexed(live, cid)) == {m["seq"] for m in sent}
    with live.svc.Session.begin() as s:  # from an empty index, a batch lands in the tail only
        index.forget(s, cid, [m["seq"] for m in sent])
    stage.index_messages(live.svc, cid, [m["id"] for m in sent[:3]])
    rows = stored(live, cid)
    assert set(rows) == {(postings.TAIL, 0)}
    assert postings.held(postings.decode(rows[postings.TAIL, 0])) == {m["seq"] for m in sent[:3]}
    assert {h["message"]["id"] for h in hits(api, b, tag)} == {m["id"] for m in sent[:3]}


def timed(stack: Stack, cid: str) -> dict[int, int]:
    """seq -> the created_at (microseconds) the conversation's times rows hold."""
    return {
        g * postings.SEGMENT_SEQS + o: t
        for (_, g), data in stored(stack, cid, times=True).items()
        for o, t in enumerate(postings.times(data))
        if t
    }


def test_the_times_rows_hold_each_indexed_message_s_created_at(api: Api, live: Stack) -> None:
    """The search reads candidates newest first by these times, so they must be the rows'
    own; a deleted message's time goes with its postings."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    tag = word()
    sent = [api.send(a, cid, f"{tag} at {i}") for i in range(3)]
    wait_found(api, b, tag, 3)
    with live.svc.Session() as s:
        rows = s.execute(
            select(Message.seq, Message.created_at).where(Message.conversation_id == cid)
        ).all()
    assert timed(live, cid) == {seq: postings.micros(at) for seq, at in rows}
    assert api.delete(f"/v1/messages/{sent[1]['id']}", user=a).status_code in (200, 204)
    assert sent[1]["seq"] not in timed(live, cid)
    assert {sent[0]["seq"], sent[2]["seq"]} <= set(timed(live, cid))


def test_postings_shrink_when_messages_are_deleted_or_purged(api: Api, live: Stack) -> None:
    """No stale seq is left behind: a soft delete and the purge rewrite the rows that named
    the message, and rows left empty are deleted."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    shared = word()
    keep = api.send(a, cid, f"{shared} {word()} {word()}")
    gone = api.send(a, cid, f"{shared} {word()} {word()} {word()}")
    purged = api.send(a, cid, f"{shared} {word()}")
    wait_found(api, b, shared, 3)
    size = sum(map(len, stored(live, cid).values()))
    assert set(indexed(live, cid)) == {keep["seq"], gone["seq"], purged["seq"]}
    assert api.delete(f"/v1/messages/{gone['id']}", user=a).status_code in (200, 204)
    after_delete = sum(map(len, stored(live, cid).values()))
    assert after_delete < size
    assert set(indexed(live, cid)) == {keep["seq"], purged["seq"]}
    with live.svc.Session.begin() as s:
        assert delete_messages(live.svc, s, [purged["id"], keep["id"]])[0] == 2
    assert stored(live, cid) == {}
    assert stored(live, cid, times=True) == {}
    assert hits(api, b, shared) == []


def test_reencryption_moves_the_postings_to_the_new_key(api: Api, live: Stack) -> None:
    """rotate-keys --reencrypt rewrites each batch's postings under the new data key: the
    message is still found, and its old-key tokens are gone (same seqs, other tokens)."""
    from domain.rotation import reencrypt_conversation

    a, b = uid(), uid()
    cid = api.conversation(a, b)
    tag = word()
    sent = [api.send(a, cid, f"{tag} rotate {i} {word()}")["id"] for i in range(3)]
    wait_found(api, b, tag, 3)
    before = indexed(live, cid)
    old_tokens = {t for data in stored(live, cid).values() for t in postings.decode(data)}
    assert reencrypt_conversation(live.svc, cid, 0, lambda done: None) == 3
    assert indexed(live, cid) == before
    new_tokens = {t for data in stored(live, cid).values() for t in postings.decode(data)}
    assert not old_tokens & new_tokens
    assert {h["message"]["id"] for h in hits(api, b, tag)} == set(sent)
