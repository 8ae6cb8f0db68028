"""Attachments end to end (issue #6): real worker, Redis, SQLite and PostgreSQL, local and S3
storage. Upload → processing → ready → attach → deliver → signed download with ranges; limits
and rejections that change nothing; metadata stripping; no plaintext at rest; access rules.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from PIL import ExifTags, Image, ImageChops, PngImagePlugin
from sqlalchemy import event, select, text, update
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import TestResponse, encode_multipart

from core.ids import utcnow
from domain import attachments as atts
from domain.attachments import downloads, intake, processing, stored
from domain.pagination import encode_cursor
from models import Attachment, Message, Outbox
from tests.conftest import ROOT, RedisServer, Stack, Worker, wait_for
from tests.factories import Api, files_containing, stream_events, uid, wait_delivered
from tests.storage.test_storage import s3_client, start_moto

MB = 1024 * 1024


# --- helpers ----------------------------------------------------------------------------------


def photo(w: int, h: int) -> Image.Image:
    """Camera-like content: noise over gradients (compresses like a photo, not like a flat fill)."""
    noise = Image.effect_noise((w, h), 40)
    grad = Image.linear_gradient("L").resize((w, h))
    return Image.merge(
        "RGB",
        (ImageChops.add(noise, grad, 2), grad.transpose(Image.Transpose.ROTATE_90).resize((w, h)),
         ImageChops.subtract(grad, noise)),
    )  # fmt: skip


GPS = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 1.0), 6: 34.0}


def jpeg_with_gps(w: int = 1600, h: int = 1200, orientation: int = 6) -> bytes:
    """A phone-like JPEG: GPS position, camera make, a comment and a rotate-90 orientation."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "CanaryPhone"
    exif[ExifTags.IFD.GPSInfo] = GPS
    out = io.BytesIO()
    photo(w, h).save(out, "JPEG", quality=88, exif=exif, comment=b"secret comment")
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    return data


def multipart(fields: dict[str, Any], user: str | None, api: Api) -> TestResponse:
    """POST /v1/attachments with a body encoded in memory, fields in the order given."""
    boundary, body = encode_multipart(MultiDict(list(fields.items())))
    return api.post(
        "/v1/attachments",
        user=user,
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )


def upload(
    api: Api, user: str, cid: str, data: bytes, name: str = "file.bin", *, file_first: bool = False
) -> TestResponse:
    part = {"file": FileStorage(io.BytesIO(data), filename=name)}
    body = {**part, "conversation_id": cid} if file_first else {"conversation_id": cid, **part}
    return multipart(body, user, api)


def uploaded(api: Api, user: str, cid: str, data: bytes, name: str = "file.bin") -> str:
    resp = upload(api, user, cid, data, name)
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["state"] == "processing"
    return str(body["id"])


def settled(api: Api, user: str, aid: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/v1/attachments/{aid}", user=user).get_json()
        return body if body["state"] != "processing" else None

    found: dict[str, Any] = wait_for(done, timeout, 0.1, f"attachment {aid} to settle")
    return found


def delivered(stack: Stack, user: str, mids: list[str]) -> None:
    """In the user's stream and committed as delivered (fan-out appends just before its commit,
    so a REST read right after the event can still find the message pending)."""
    wait_delivered(stack, user, mids)

    def committed() -> bool:
        with stack.svc.ReadSession() as s:
            states = s.scalars(select(Message.state).where(Message.id.in_(mids))).all()
        return list(states) == ["delivered"] * len(mids)

    wait_for(committed, 10, what="state=delivered")


def ready_events(stack: Stack, user: str, aid: str) -> list[dict[str, Any]]:
    return [
        e
        for e in stream_events(stack, user, "attachment.ready")
        if e["data"]["attachment_id"] == aid
    ]


def stored_keys(stack: Stack) -> set[str]:
    with stack.app.app_context():
        return set(atts.storage_for(stack.svc).keys())


def fetch(api: Api, url: str, headers: dict[str, str] | None = None) -> TestResponse:
    return api.client.get(url, headers=headers or {})


def pg_rows_containing(stack: Stack, needles: list[bytes]) -> list[str]:
    if stack.name != "postgres":
        return []  # SQLite's database file lives in the data dir and is scanned with it
    hits = []
    with stack.svc.Session() as s:
        for table in ("attachments", "messages", "outbox"):
            for row in s.execute(text(f"SELECT * FROM {table}")):  # noqa: S608 (fixed names)
                for value in row:
                    raw = value if isinstance(value, bytes) else str(value).encode()
                    hits += [f"{table}: {n!r}" for n in needles if n in raw]
    return hits


@pytest.fixture
def paused(live: Stack) -> Iterator[Stack]:
    """The stack with its worker stopped, so the test can look at an upload before the media
    stage runs (restarted afterwards for the tests that follow)."""
    live.worker.stop()
    try:
        yield live
    finally:
        if live.worker.proc is None:
            live.worker.start(live.app)


# --- the whole path ---------------------------------------------------------------------------


def test_image_upload_becomes_ready_is_delivered_and_downloads_with_ranges(
    api: Api, live: Stack
) -> None:
    """upload → 202 processing → attachment.ready → image message → the recipient gets the
    message with attachment metadata → signed URLs → full and partial downloads."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    resp = upload(api, a, cid, jpeg_with_gps(), "../../etc/Holiday\u202eGPJ.exe")
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    aid = body["id"]
    assert resp.headers["Location"] == f"/v1/attachments/{aid}"
    assert (body["state"], body["kind"], body["content_type"]) == (
        "processing",
        "image",
        "image/jpeg",
    )
    assert body["filename"] == "Holiday_GPJ.jpg"  # no path, no bidi override, our extension
    assert api.get(f"/v1/attachments/{aid}", user=b).status_code == 404  # not shared yet

    meta = settled(api, a, aid)
    assert meta["state"] == "ready"
    assert set(meta["variants"]) == {"original", "thumb", "medium", "large"}
    assert (meta["width"], meta["height"]) == (1200, 1600)  # orientation applied
    events = wait_for(lambda: ready_events(live, a, aid), 10, what="attachment.ready")
    assert [e["data"]["state"] for e in events] == ["ready"]
    assert "id" in events[0]  # durable: clients resume from it

    sent = api.send(a, cid, None, type="image", attachments=[aid])  # text is optional
    delivered(live, b, [sent["id"]])
    msg = api.get(f"/v1/messages/{sent['id']}", user=b).get_json()
    assert msg["type"] == "image" and msg["text"] is None
    [embedded] = msg["attachments"]
    assert embedded["id"] == aid and embedded["filename"] == "Holiday_GPJ.jpg"
    assert embedded["variants"]["thumb"]["width"] == 160
    assert "url" not in embedded["variants"]["original"]  # URLs are per viewer, fetched apart

    theirs = api.get(f"/v1/attachments/{aid}", user=b).get_json()
    # one shape: on its own, an attachment is the embedded one plus where it sits and URLs
    bare = {n: {k: v for k, v in m.items() if k != "url"} for n, m in theirs["variants"].items()}
    assert {**theirs, "variants": bare} == {
        **embedded,
        "conversation_id": cid,
        "message_id": sent["id"],
        "urls_expire_at": theirs["urls_expire_at"],
    }
    url = theirs["variants"]["original"]["url"]
    full = fetch(api, url)
    assert full.status_code == 200
    assert full.headers["Content-Type"] == "image/jpeg"
    assert full.headers["X-Content-Type-Options"] == "nosniff"
    assert full.headers["Accept-Ranges"] == "bytes"
    assert full.headers["Content-Disposition"] == (
        "attachment; filename=\"Holiday_GPJ.jpg\"; filename*=UTF-8''Holiday_GPJ.jpg"
    )
    data = full.data
    assert len(data) == theirs["size"] == int(full.headers["Content-Length"])
    assert Image.open(io.BytesIO(data)).size == (1200, 1600)

    part = fetch(api, url, {"Range": "bytes=100-70099"})  # crosses a 64 KiB sealed chunk
    assert part.status_code == 206
    assert part.data == data[100:70100]
    assert part.headers["Content-Range"] == f"bytes 100-70099/{len(data)}"
    suffix = fetch(api, url, {"Range": "bytes=-17"})
    assert suffix.status_code == 206 and suffix.data == data[-17:]
    beyond = fetch(api, url, {"Range": f"bytes={len(data) + 10}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert beyond.content_type == "application/problem+json"
    stale = fetch(api, url, {"Range": "bytes=0-9", "If-Range": '"something-else"'})
    assert stale.status_code == 200 and stale.data == data

    thumb = fetch(api, theirs["variants"]["thumb"]["url"])
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert "Holiday_GPJ-thumb.jpg" in thumb.headers["Content-Disposition"]


def test_metadata_is_stripped_orientation_applied_and_thumbnails_are_valid_images(
    api: Api, live: Stack
) -> None:
    """No GPS (or any EXIF, comment, XMP, ICC) survives in the original or any thumbnail."""
    a = uid()
    cid = api.conversation(a, uid())
    source = jpeg_with_gps(2000, 1000, orientation=6)
    assert b"CanaryPhone" in source and b"secret comment" in source
    aid = uploaded(api, a, cid, source, "IMG_0001.JPG")
    meta = settled(api, a, aid)
    assert meta["state"] == "ready"
    expected = {
        "original": (1000, 2000),
        "large": (540, 1080),
        "medium": (240, 480),
        "thumb": (160, 160),
    }
    for variant, size in expected.items():
        data = fetch(api, meta["variants"][variant]["url"]).data
        assert b"CanaryPhone" not in data and b"secret comment" not in data
        im = Image.open(io.BytesIO(data))
        im.verify()  # a complete, decodable file
        im = Image.open(io.BytesIO(data))
        assert im.size == size, variant
        assert im.format == "JPEG"
        assert not im.getexif(), f"{variant} keeps EXIF"
        assert not im.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert not {"exif", "icc_profile", "xmp", "comment"} & set(im.info), variant
        described = meta["variants"][variant]
        assert (described["width"], described["height"]) == size


def test_images_with_transparency_get_webp_thumbnails_and_gifs_keep_animation(
    api: Api, live: Stack
) -> None:
    a = uid()
    cid = api.conversation(a, uid())
    png = io.BytesIO()
    Image.new("RGBA", (900, 300), (0, 128, 255, 100)).save(png, "PNG")
    frames = [photo(240, 180).convert("P") for _ in range(4)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=90, loop=0)
    png_id = uploaded(api, a, cid, png.getvalue(), "a.png")
    gif_id = uploaded(api, a, cid, gif.getvalue(), "a.gif")
    png_meta, gif_meta = settled(api, a, png_id), settled(api, a, gif_id)
    assert png_meta["variants"]["thumb"]["content_type"] == "image/webp"
    thumb = Image.open(io.BytesIO(fetch(api, png_meta["variants"]["thumb"]["url"]).data))
    assert thumb.mode == "RGBA" and thumb.size == (160, 160)
    original = Image.open(io.BytesIO(fetch(api, gif_meta["variants"]["original"]["url"]).data))
    assert original.format == "GIF" and original.n_frames == 4
    first = Image.open(io.BytesIO(fetch(api, gif_meta["variants"]["thumb"]["url"]).data))
    assert first.size == (160, 160) and set(gif_meta["variants"]) == {"original", "thumb"}


def test_a_text_file_round_trips_with_ranges_across_sealed_chunks(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    lines = "".join(f"line {i:06d} — ünïcode ✓\n" for i in range(8000)).encode()
    assert len(lines) > 3 * 64 * 1024
    aid = uploaded(api, a, cid, lines, "notes")
    meta = settled(api, a, aid)
    assert (meta["kind"], meta["content_type"], meta["filename"]) == (
        "file",
        "text/plain",
        "notes.txt",
    )
    assert set(meta["variants"]) == {"original"} and meta["size"] == len(lines)
    sent = api.send(a, cid, "the notes", type="file", attachments=[aid])
    delivered(live, b, [sent["id"]])
    url = api.get(f"/v1/attachments/{aid}", user=b).get_json()["variants"]["original"]["url"]
    full = fetch(api, url)
    assert full.data == lines and full.headers["Content-Type"] == "text/plain; charset=utf-8"
    for start, end in [
        (0, 0),
        (65_530, 65_545),
        (131_000, 200_000),
        (len(lines) - 1, len(lines) - 1),
    ]:
        part = fetch(api, url, {"Range": f"bytes={start}-{end}"})
        assert part.status_code == 206 and part.data == lines[start : end + 1]


def test_uploads_may_name_their_conversation_after_the_file(api: Api, live: Stack) -> None:
    a = uid()
    cid = api.conversation(a, uid())
    resp = upload(api, a, cid, b"%PDF-1.4\n%%EOF\n", "spec.pdf", file_first=True)
    assert resp.status_code == 202, resp.get_json()
    assert settled(api, a, resp.get_json()["id"])["content_type"] == "application/pdf"


# --- limits and rejections change nothing -----------------------------------------------------


def _assert_nothing_stored(stack: Stack, before: set[str], user: str) -> None:
    """No row for the user, and no new object but those of earlier uploads the worker is
    still finishing (every object's key names its attachment)."""
    with stack.svc.Session() as s:
        assert s.scalars(select(Attachment).where(Attachment.uploader_id == user)).all() == []
        for key in stored_keys(stack) - before:
            att = s.get(Attachment, key.split("/")[1 if key.startswith("uploads/") else 2])
            assert att is not None and att.uploader_id != user, key


def test_files_over_the_size_limits_are_413_and_store_nothing(api: Api, stack: Stack) -> None:
    a = uid()
    cid = api.conversation(a, uid())
    before = stored_keys(stack)
    image = b"\xff\xd8\xff\xe0" + os.urandom(5 * MB)  # past the 5 MB image limit
    pdf = b"%PDF-1.5\n" + os.urandom(10 * MB)  # past the 10 MB file limit
    body = os.urandom(11 * MB)  # past the whole-request limit, refused before reading
    for data, detail in [(image, "an image may be at most"), (pdf, "a file may be at most")]:
        resp = upload(api, a, cid, data, "big")
        assert resp.status_code == 413, resp.get_json()
        assert resp.content_type == "application/problem+json"
        assert detail in resp.get_json()["detail"]
    resp = upload(api, a, cid, body, "huge")
    assert resp.status_code == 413 and resp.content_type == "application/problem+json"
    just_under = b"%PDF-1.5\n" + os.urandom(5 * MB)  # a 5+ MB file is fine when it is no image
    assert upload(api, a, cid, just_under, "ok.pdf").status_code == 202
    assert len(stored_keys(stack) - before) <= 2  # that one upload (spool or its original)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"MZ\x90\x00" + bytes(300), 415),
        (b"\x00\x00\x00\x18ftypqt  " + bytes(300), 415),
        (b"text\x00with NUL" * 20, 415),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(700), 415),
        (b"PK\x03\x04" + bytes(300), 415),
        (b"\x89PNG\r\n\x1a\n" + bytes(300), 415),
        (b"", 422),
    ],
    ids=["exe", "quicktime", "nul-text", "ole2-not-word", "zip-not-docx", "fake-png", "empty"],
)
def test_types_off_the_allow_list_are_415_and_store_nothing(
    api: Api, stack: Stack, data: bytes, status: int
) -> None:
    a = uid()
    cid = api.conversation(a, uid())
    before = stored_keys(stack)
    resp = upload(api, a, cid, data, "photo.jpg")  # the claimed name and type change nothing
    assert resp.status_code == status, resp.get_json()
    assert resp.content_type == "application/problem+json" and "file" in resp.get_json()["errors"]
    _assert_nothing_stored(stack, before, a)


def test_a_decompression_bomb_is_refused_at_upload(api: Api, stack: Stack) -> None:
    """60 megapixels in a few KB: refused from the header, before any pixel is decoded."""
    a = uid()
    cid = api.conversation(a, uid())
    bomb = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(bomb, "PNG", optimize=True)
    assert len(bomb.getvalue()) < 100_000
    before = stored_keys(stack)
    resp = upload(api, a, cid, bomb.getvalue(), "bomb.png")
    assert resp.status_code == 422, resp.get_json()
    assert "60000000 pixels; the limit is 50000000" in resp.get_json()["detail"]
    _assert_nothing_stored(stack, before, a)


def test_bad_upload_requests_are_problems(api: Api, stack: Stack) -> None:
    a, c = uid(), uid()
    cid = api.conversation(a, uid())
    before = stored_keys(stack)
    json_body = api.post("/v1/attachments", user=a, json={"conversation_id": cid})
    assert json_body.status_code == 415
    no_conv = multipart({"file": FileStorage(io.BytesIO(b"hello"), "a.txt")}, a, api)
    assert no_conv.status_code == 422 and no_conv.get_json()["errors"] == {
        "conversation_id": ["required"]
    }
    fields = {
        "conversation_id": cid,
        "caption": "x",
        "file": FileStorage(io.BytesIO(b"hi"), "a.txt"),
    }
    extra = multipart(fields, a, api)
    assert extra.status_code == 422 and "caption" in extra.get_json()["errors"]
    stranger = upload(api, c, cid, b"hello", "a.txt")
    assert stranger.status_code == 404
    stranger_late = upload(api, c, cid, b"hello", "a.txt", file_first=True)
    assert stranger_late.status_code == 404
    assert api.post("/v1/attachments", data={}).status_code == 401
    _assert_nothing_stored(stack, before, a)
    _assert_nothing_stored(stack, before, c)


def test_a_corrupt_image_is_rejected_by_the_media_stage_leaving_no_bytes(
    api: Api, live: Stack
) -> None:
    """A JPEG whose header is fine but whose data stops halfway: accepted (202), then
    rejected with a reason in attachment.ready; neither spool nor variants remain."""
    a = uid()
    cid = api.conversation(a, uid())
    whole = io.BytesIO()
    photo(800, 600).save(whole, "JPEG", quality=90)
    aid = uploaded(api, a, cid, whole.getvalue()[: len(whole.getvalue()) // 2], "cut.jpg")
    meta = settled(api, a, aid)
    assert meta["state"] == "rejected" and "corrupt or truncated" in meta["reason"]
    assert meta["variants"] == {} and "urls_expire_at" not in meta
    [event] = wait_for(lambda: ready_events(live, a, aid), 10, what="the rejection event")
    assert event["data"]["state"] == "rejected" and event["data"]["reason"] == meta["reason"]
    assert not [k for k in stored_keys(live) if aid in k]
    resp = api.post(
        f"/v1/conversations/{cid}/messages", user=a, json={"type": "image", "attachments": [aid]}
    )
    assert resp.status_code == 422


# --- no plaintext at rest ---------------------------------------------------------------------


def canary_png(canary: bytes) -> bytes:
    """An uncompressed PNG whose pixel bytes spell the canary, plus the canary in a text chunk."""
    row = canary * 8
    im = Image.frombytes("L", (len(row), 40), row * 40)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", canary.decode())
    out = io.BytesIO()
    im.save(out, "PNG", compress_level=0, pnginfo=info)
    return out.getvalue()


def test_nothing_at_rest_holds_the_plaintext(api: Api, paused: Stack) -> None:
    """Canaries in a text file, in an image's pixels and metadata and in a filename: neither
    the spool (looked at before the media stage runs) nor the stored variants, the database,
    or the worker's log contain them."""
    stack = paused
    canary = b"CANARY-" + uuid.uuid4().hex.encode()
    a = uid()
    cid = api.conversation(a, uid())
    txt = b"confidential " + canary + b"\n" * 100
    png = canary_png(canary)
    assert canary in png  # the raw upload does carry it
    ids = [
        uploaded(api, a, cid, txt, f"{canary.decode()}.txt"),
        uploaded(api, a, cid, png, "pixels.png"),
    ]
    keys = stored_keys(stack)
    assert {atts.upload_key(i) for i in ids} <= keys  # the spools, sealed
    needles = [canary, canary[:16], canary.decode().encode("utf-16-le")]
    assert files_containing(stack.data_dir, needles) == []
    assert pg_rows_containing(stack, needles) == []

    stack.worker.start(stack.app)
    for aid in ids:
        assert settled(api, a, aid)["state"] == "ready"
    keys = stored_keys(stack)
    assert not {atts.upload_key(i) for i in ids} & keys  # spools removed after processing
    assert files_containing(stack.data_dir, needles) == []
    assert pg_rows_containing(stack, needles) == []
    got = fetch(
        api, api.get(f"/v1/attachments/{ids[0]}", user=a).get_json()["variants"]["original"]["url"]
    )
    assert got.data == txt  # and it all still opens for the people it belongs to


# --- access -----------------------------------------------------------------------------------


def test_signed_urls_expire_and_any_change_to_them_is_refused(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    aid = uploaded(api, a, cid, b"some text\n", "t.txt")
    meta = settled(api, a, aid)
    url = meta["variants"]["original"]["url"]
    assert fetch(api, url).status_code == 200
    assert meta["urls_expire_at"] - utcnow().timestamp() == pytest.approx(300, abs=5)

    path, query = url.split("?")
    q = {k: v[0] for k, v in parse_qs(query).items()}

    def with_(path: str = path, **changes: str) -> str:
        return f"{path}?{urlencode({**q, **changes})}"

    flipped = q["sig"][:-2] + ("A" if q["sig"][-2] != "A" else "B") + q["sig"][-1]
    for bad in [
        with_(sig=flipped),
        with_(u=b),  # another user
        with_(exp=str(int(q["exp"]) + 3600)),  # a longer life
        with_(path=path.replace("/original", "/thumb")),  # another variant
        with_(path=path.replace(aid, aid[:-1] + ("0" if aid[-1] != "0" else "1"))),
    ]:
        resp = fetch(api, bad)
        assert resp.status_code == 403, bad
        assert resp.content_type == "application/problem+json"
    past = int(utcnow().timestamp()) - 1
    expired = downloads.DownloadLinks(live.svc, a, expires=past).url(aid, "original")
    resp = fetch(api, expired)
    assert resp.status_code == 403 and "expired" in resp.get_json()["detail"]
    assert fetch(api, path).status_code == 422  # no signature at all


def test_only_participants_see_list_and_download(api: Api, live: Stack) -> None:
    a, b, c = uid(), uid(), uid()
    cid = api.conversation(a, b)
    aid = uploaded(api, a, cid, b"for a and b\n", "t.txt")
    settled(api, a, aid)
    assert api.get(f"/v1/attachments/{aid}", user=b).status_code == 404  # not in a message yet
    mid = api.send(a, cid, "here", type="file", attachments=[aid])["id"]
    delivered(live, b, [mid])
    url = api.get(f"/v1/attachments/{aid}", user=b).get_json()["variants"]["original"]["url"]
    assert fetch(api, url).status_code == 200
    assert api.get(f"/v1/attachments/{aid}", user=c).status_code == 404
    assert api.get(f"/v1/conversations/{cid}/attachments", user=c).status_code == 404
    assert upload(api, c, cid, b"x", "x.txt").status_code == 404
    removed = api.delete(f"/v1/conversations/{cid}/members/{b}", user=a)
    assert removed.status_code == 200, removed.get_json()
    resp = fetch(api, url)  # b's still-valid link, but b has left
    assert resp.status_code == 403 and "can no longer see" in resp.get_json()["detail"]
    api.delete(f"/v1/messages/{mid}", user=a)
    assert api.get(f"/v1/attachments/{aid}", user=a).status_code == 200  # the uploader's own


def test_attaching_rules(api: Api, live: Stack) -> None:
    """Only the uploader, only ready attachments of the same conversation, each once, of a
    kind the message type takes; failures are problems and post nothing."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    other = api.conversation(a, uid())
    img = uploaded(api, a, cid, jpeg_with_gps(400, 300), "p.jpg")
    pdf = uploaded(api, a, cid, b"%PDF-1.4\n%%EOF\n", "d.pdf")
    elsewhere = uploaded(api, a, other, b"%PDF-1.4\n%%EOF\n", "e.pdf")
    theirs = uploaded(api, b, cid, b"%PDF-1.4\n%%EOF\n", "b.pdf")
    for who, aid in [(a, img), (a, pdf), (a, elsewhere), (b, theirs)]:
        assert settled(api, who, aid)["state"] == "ready"
    url = f"/v1/conversations/{cid}/messages"

    def post(body: dict[str, Any], user: str = a) -> TestResponse:
        return api.post(url, user=user, json=body)

    cases = [
        ({"type": "image", "attachments": [pdf]}, 422, "attachments"),
        ({"type": "image", "attachments": [elsewhere]}, 422, "attachments"),
        ({"type": "file", "attachments": [theirs]}, 403, None),
        ({"type": "image", "attachments": [img, img]}, 422, "attachments"),
        ({"type": "image", "attachments": []}, 422, "attachments"),
        ({"type": "image"}, 422, "attachments"),
        ({"text": "hi", "attachments": [img]}, 422, "attachments"),
        ({"type": "video", "attachments": ["01NOSUCHATTACHMENT000000000"]}, 422, "attachments"),
    ]
    for body, status, field in cases:
        resp = post(body)
        assert resp.status_code == status, (body, resp.get_json())
        if field:
            assert field in resp.get_json()["errors"]
    first = post({"type": "file", "attachments": [img, pdf], "client_msg_id": "m1"})
    assert first.status_code == 202, first.get_json()
    again = post({"type": "file", "attachments": [img, pdf], "client_msg_id": "m1"})
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    reused = post({"type": "image", "attachments": [img]})
    assert reused.status_code == 409
    with live.svc.Session.begin() as s:
        s.execute(update(Attachment).where(Attachment.id == theirs).values(state="processing"))
    assert post({"type": "file", "attachments": [theirs]}, user=b).status_code == 409
    with live.svc.Session() as s:
        conv_seq = s.execute(text("SELECT last_seq FROM conversations WHERE id = :c"), {"c": cid})
        assert conv_seq.scalar() == 1  # the failures took no seq
    assert [x["id"] for x in first.get_json()["attachments"]] == sorted([img, pdf])


def test_media_list_and_has_attachments_filter(api: Api, live: Stack) -> None:
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    text_mid = api.send(a, cid, "plain words")["id"]
    ids = [uploaded(api, a, cid, jpeg_with_gps(300, 200), f"{i}.jpg") for i in range(2)]
    doc = uploaded(api, a, cid, b"%PDF-1.4\n%%EOF\n", "d.pdf")
    for aid in (*ids, doc):
        settled(api, a, aid)
    mids = [api.send(a, cid, None, type="image", attachments=[aid])["id"] for aid in ids]
    mids.append(api.send(a, cid, "doc", type="file", attachments=[doc])["id"])
    delivered(live, b, [text_mid, *mids])
    base = f"/v1/conversations/{cid}/messages"
    with_att = api.get(f"{base}?has_attachments=true", user=b).get_json()["items"]
    assert [m["id"] for m in with_att] == mids
    without = api.get(f"{base}?has_attachments=false", user=b).get_json()["items"]
    assert [m["id"] for m in without] == [text_mid]

    page = api.get(f"/v1/conversations/{cid}/attachments?limit=2", user=b).get_json()
    assert [i["id"] for i in page["items"]] == [doc, ids[1]]  # newest message first
    assert page["items"][0]["seq"] == 4 and page["items"][0]["variants"]["original"]["url"]
    rest = api.get(
        f"/v1/conversations/{cid}/attachments?limit=2&cursor={page['next_cursor']}", user=b
    ).get_json()
    assert [i["id"] for i in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    images = api.get(f"/v1/conversations/{cid}/attachments?kind=image", user=b).get_json()
    assert [i["id"] for i in images["items"]] == [ids[1], ids[0]]
    bad = api.get(f"/v1/conversations/{cid}/attachments?kind=spreadsheet", user=b)
    assert bad.status_code == 422
    forged = encode_cursor({"s": "4 OR 1=1", "id": 7})  # well-formed, wrong types
    bad = api.get(f"/v1/conversations/{cid}/attachments?cursor={forged}", user=b)
    assert bad.status_code == 422 and "cursor" in bad.get_json()["errors"]


@contextmanager
def attachment_reads(stack: Stack) -> Iterator[list[str]]:
    """The statements this process sends that read the attachments table."""
    seen: list[str] = []

    def on_execute(_conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "FROM attachments" in statement:
            seen.append(statement)

    event.listen(stack.svc.engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(stack.svc.engine, "before_cursor_execute", on_execute)


def test_only_media_messages_cost_an_attachments_read(api: Api, live: Stack) -> None:
    """Only image, file, audio and video messages carry attachments, so text messages (what
    the live hub renders most) are rendered without reading the attachments table, and a page
    with media still reads them once for the page."""
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    texts = [api.send(a, cid, f"words {i}")["id"] for i in range(3)]
    delivered(live, b, texts)
    base = f"/v1/conversations/{cid}/messages"
    with attachment_reads(live) as seen:
        page = api.get(base, user=b).get_json()["items"]
        one = api.get(f"/v1/messages/{texts[0]}", user=b).get_json()
    assert [m["id"] for m in page] == texts
    assert all(m["attachments"] == [] for m in [*page, one])
    assert seen == []
    aid = uploaded(api, a, cid, jpeg_with_gps(300, 200), "p.jpg")
    settled(api, a, aid)
    mid = api.send(a, cid, None, type="image", attachments=[aid])["id"]
    delivered(live, b, [mid])
    with attachment_reads(live) as seen:
        page = api.get(base, user=b).get_json()["items"]
    assert [m["id"] for m in page] == [*texts, mid]
    assert [att["id"] for att in page[-1]["attachments"]] == [aid]
    assert len(seen) == 1


# --- the media stage runs once in effect ------------------------------------------------------


def test_the_media_stage_run_again_does_only_what_is_missing(api: Api, paused: Stack) -> None:
    """Variants made by a run that died before committing are kept (their sealed bytes are not
    rewritten), a missing one is made, and any number of further runs change nothing and
    announce nothing more."""
    stack = paused
    a = uid()
    cid = api.conversation(a, uid())
    aid = uploaded(api, a, cid, jpeg_with_gps(1300, 900), "p.jpg")
    # an app context for domain/outbox.py, whose after-commit hook sends through services()
    with stack.app.app_context():
        svc = stack.svc
        store = atts.storage_for(svc)
        with svc.ReadSession() as s:
            att = s.get(Attachment, aid)
        processing.make_variants(svc, store, att)  # a first run that dies before its commit
        key = lambda v: atts.object_key(cid, aid, v)  # noqa: E731
        original = b"".join(store.open(key("original")))
        store.delete(key("thumb"))
        assert processing.process(svc, aid) == "ready"
        assert b"".join(store.open(key("original"))) == original  # kept, not redone
        assert store.exists(key("thumb"))
        made = {v: b"".join(store.open(key(v))) for v in ("original", "thumb", "medium", "large")}
        for _ in range(2):
            assert processing.process(svc, aid) == "ready"
        assert {v: b"".join(store.open(key(v))) for v in made} == made
        assert not store.exists(atts.upload_key(aid))
    with stack.svc.Session() as s:
        row = s.scalar(select(Outbox).where(Outbox.ref_id == aid))
        assert row is not None and row.done_at is not None
    stack.worker.start(stack.app)  # the queued task from the upload runs now, as a no-op
    marker = uploaded(api, a, cid, b"marker\n", "m.txt")
    settled(api, a, marker)
    assert len(ready_events(stack, a, aid)) == 1
    assert settled(api, a, aid)["variants"]["thumb"]["width"] == 160


# --- the storage backend ----------------------------------------------------------------------


def test_each_services_object_has_one_storage_backend_reached_without_flask(
    stack: Stack, tmp_path: Path
) -> None:
    """Views, tasks and the CLI reach the backend through their Services, with no app context
    (none is pushed here). Services with other settings get a backend of their own, and one
    that is dropped leaves no entry a later object could inherit."""
    svc = stack.svc
    assert atts.storage_for(svc) is atts.storage_for(svc)
    other = dataclasses.replace(
        svc, settings=svc.settings.model_copy(update={"data_dir": tmp_path})
    )
    theirs = atts.storage_for(other)
    assert theirs is not atts.storage_for(svc)
    theirs.put("probe/x", [b"x"])
    assert (tmp_path / "files" / "probe" / "x").read_bytes() == b"x"
    key = id(other)
    del other, theirs
    gc.collect()
    assert key not in stored._backends


# --- S3 storage, end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The app and a worker storing into a bucket on moto's S3 server (SQLite, Redis db 13)."""
    from models.migrate import upgrade
    from tests.conftest import JWT_SECRET
    from web import create_app

    server, endpoint = start_moto()
    bucket = "parley-e2e"
    s3_client(endpoint).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    data_dir = tmp_path_factory.mktemp("data-s3")
    url = f"sqlite:///{data_dir / 'parley.db'}"
    upgrade(url)
    redis_url = redis_server.url(13)
    s3 = {
        "storage": "s3",
        "s3_bucket": bucket,
        "s3_endpoint_url": endpoint,
        "s3_region": "us-east-1",
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "CELERY_"))},
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_JWT_SECRET": JWT_SECRET,
        "PYTHONPATH": str(ROOT),
        **{f"PARLEY_{k.upper()}": v for k, v in s3.items()},
    }
    app = create_app(
        {
            "database_url": url,
            "redis_url": redis_url,
            "broker_url": redis_url,
            "data_dir": data_dir,
            "jwt_secret": JWT_SECRET,
            "testing": True,
            **s3,
        }
    )
    st = Stack("s3", app, env, redis_server.client(13), data_dir, Worker(env, data_dir / "w.log"))
    yield st
    st.worker.stop()
    st.svc.engine.dispose()
    server.stop()  # type: ignore[attr-defined]


def test_s3_storage_end_to_end_holds_only_sealed_bytes(s3_stack: Stack) -> None:
    """Upload into the bucket (spool sealed, looked at before any worker runs), process with a
    real worker, download by range; no object in the bucket ever holds the plaintext."""
    api = Api(s3_stack)
    with s3_stack.app.app_context():
        store = atts.storage_for(s3_stack.svc)
    canary = b"S3-CANARY-" + uuid.uuid4().hex.encode()
    a, b = uid(), uid()
    cid = api.conversation(a, b)
    txt = b"line " + canary + b"\n" + os.urandom(1).hex().encode() * 50_000
    ids = [uploaded(api, a, cid, txt, "s3.txt"), uploaded(api, a, cid, canary_png(canary), "p.png")]

    def bucket_hits() -> list[str]:
        return [k for k in store.keys("") if canary in b"".join(store.open(k))]

    assert {atts.upload_key(i) for i in ids} <= set(store.keys())
    assert bucket_hits() == []
    s3_stack.worker.start(s3_stack.app)
    for aid in ids:
        assert settled(api, a, aid)["state"] == "ready"
    keys = set(store.keys())
    assert not [k for k in keys if k.startswith("uploads/")]
    assert {f"attachments/{cid}/{ids[1]}/{v}" for v in ("original", "thumb")} <= keys
    assert bucket_hits() == []
    mid = api.send(a, cid, None, type="file", attachments=[ids[0]])["id"]
    delivered(s3_stack, b, [mid])
    url = api.get(f"/v1/attachments/{ids[0]}", user=b).get_json()["variants"]["original"]["url"]
    assert fetch(api, url).data == txt
    part = fetch(api, url, {"Range": "bytes=70000-140000"})
    assert part.status_code == 206 and part.data == txt[70000:140001]


def test_openapi_documents_the_attachment_routes(api: Api, stack: Stack) -> None:
    spec = api.get("/openapi.json").get_json()
    paths = set(spec["paths"])
    assert {
        "/v1/attachments",
        "/v1/attachments/{aid}",
        "/v1/attachments/{aid}/content/{variant}",
        "/v1/conversations/{cid}/attachments",
    } <= paths
    assert spec["paths"]["/v1/attachments/{aid}/content/{variant}"]["get"]["security"] == []
    assert re.search("multipart", spec["paths"]["/v1/attachments"]["post"]["summary"])


def test_upload_filenames_are_sanitized() -> None:
    from storage.sniff import PDF, TXT

    cases = {
        "../../etc/passwd": ("passwd.txt", TXT),
        "C:\\Users\\x\\report.final.PDF": ("report.final.pdf", PDF),
        "a\x00b\x1fc.txt": ("a_b_c.txt", TXT),
        "": ("file.txt", TXT),
        "...": ("file.txt", TXT),
        "x" * 500 + ".pdf": ("x" * 196 + ".pdf", PDF),
        "résumé.pdf": ("résumé.pdf", PDF),
        'quote".pdf': ("quote.pdf", PDF),
    }
    for raw, (want, ftype) in cases.items():
        assert intake.sanitize_filename(raw, ftype) == want, raw
