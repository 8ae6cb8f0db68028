"""Storage backends, the sealed file format and content sniffing, with real servers and files.

The S3 backend runs against moto's standalone S3-compatible server on loopback (a real HTTP
server speaking the S3 protocol, driven by the real boto3 client), not against stubs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from PIL import Image

from core.filecrypt import (
    CHUNK_SIZE,
    HEADER_BYTES,
    TAG_BYTES,
    CorruptFile,
    SealedFile,
    plain_size,
    seal_stream,
    sealed_size,
)
from storage import ObjectMissing, Storage, check_key
from storage.local import LocalStorage
from storage.s3 import PART_BYTES, S3Storage
from storage.sniff import (
    AAC,
    DOC,
    DOCX,
    GIF,
    JPEG,
    M4A,
    MP3,
    MP4,
    OGG,
    PDF,
    PNG,
    TXT,
    WAV,
    WEBP,
    Rejected,
    Sniffer,
    confirm,
)
from tests.conftest import ROOT, free_port, wait_for

KEY = bytes(range(32))


# --- a real S3-compatible server --------------------------------------------------------------


def start_moto() -> tuple[object, str]:
    """moto's threaded S3 server on a free loopback port; returns (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(endpoint), 15, what="the moto S3 server")
    return server, endpoint


def _answers(endpoint: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(endpoint, timeout=1):  # noqa: S310 (loopback test server)
            return True
    except Exception:
        return False


def s3_client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server, endpoint = start_moto()
    yield endpoint
    server.stop()  # type: ignore[attr-defined]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend test runs against the filesystem and against the S3 server."""
    if request.param == "local":
        return LocalStorage(tmp_path / "files")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"b-{os.urandom(4).hex()}"
    client = s3_client(endpoint)
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    return S3Storage(
        bucket,
        prefix="parley",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
    )


def _pieces(data: bytes, size: int = 50_000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- the backends -----------------------------------------------------------------------------


def test_put_open_ranges_size_exists_delete_and_keys(store: Storage) -> None:
    data = os.urandom(300_000)
    assert store.put("uploads/a1", _pieces(data)) == len(data)
    assert store.exists("uploads/a1") and store.size("uploads/a1") == len(data)
    assert b"".join(store.open("uploads/a1")) == data
    for start, end in [(0, 1), (10, 70_000), (299_990, None), (123_456, 300_000), (5, 5)]:
        assert b"".join(store.open("uploads/a1", start, end)) == data[start:end]
    store.put("attachments/c/a2/original", [b"x"])
    assert list(store.keys("attachments/")) == ["attachments/c/a2/original"]
    assert sorted(store.keys()) == ["attachments/c/a2/original", "uploads/a1"]
    store.delete("uploads/a1")
    store.delete("uploads/a1")  # absent is fine
    assert not store.exists("uploads/a1")
    with pytest.raises(ObjectMissing):
        store.open("uploads/a1")
    with pytest.raises(ObjectMissing):
        store.size("uploads/a1")


def test_a_put_whose_source_fails_leaves_nothing_and_keeps_the_old_object(store: Storage) -> None:
    """Atomic writes: the old object stays whole, and no partial object or temp file appears,
    also past the S3 multipart threshold."""
    store.put("k/v", [b"old"])

    def failing() -> Iterator[bytes]:
        yield os.urandom(PART_BYTES + 1000)  # the S3 backend has started a multipart upload
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.put("k/v", failing())
    with pytest.raises(RuntimeError):
        store.put("k/new", failing())
    assert b"".join(store.open("k/v")) == b"old"
    assert not store.exists("k/new")
    assert list(store.keys()) == ["k/v"]
    if isinstance(store, S3Storage):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket)
        assert not uploads.get("Uploads"), "aborted multipart uploads must not linger"
    else:
        assert [p.name for p in store.root.rglob("*") if p.is_file()] == ["v"]


def test_s3_multipart_round_trip_with_ranges(s3_endpoint: str) -> None:
    """A sealed object larger than two parts goes up as a multipart upload and reads back by
    range, decrypting only the chunks the range touches."""
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="parley-mp")  # type: ignore[attr-defined]
    store = S3Storage("parley-mp", endpoint_url=s3_endpoint, client=client)
    data = os.urandom(2 * PART_BYTES + 12_345)
    store.put("attachments/c/a/original", seal_stream(KEY, "att:a:original", _pieces(data)))
    assert store.size("attachments/c/a/original") == sealed_size(len(data))
    raw = client.get_object(Bucket="parley-mp", Key="attachments/c/a/original")  # type: ignore[attr-defined]
    assert data[:4096] not in raw["Body"].read()
    sealed = SealedFile(
        KEY,
        "att:a:original",
        store.size("attachments/c/a/original"),
        lambda a, b: store.open("attachments/c/a/original", a, b),
    )
    assert sealed.size == len(data)
    for start, end in [(0, 100), (CHUNK_SIZE - 5, CHUNK_SIZE + 5), (PART_BYTES, PART_BYTES + 3)]:
        assert b"".join(sealed.iter_range(start, end)) == data[start:end]
    assert b"".join(sealed.iter_range()) == data


def test_storage_keys_cannot_escape_the_root() -> None:
    for bad in ("../x", "a/../../x", "/abs", "a//b", "", "a\\b", "a/b/", ".hidden", "a b"):
        with pytest.raises(ValueError):
            check_key(bad)
    assert check_key("attachments/01ABC/01DEF/thumb") == "attachments/01ABC/01DEF/thumb"


# --- the sealed format ------------------------------------------------------------------------


def _sealed(blob: bytes, context: str = "att:x:original") -> SealedFile:
    return SealedFile(KEY, context, len(blob), lambda a, b: [blob[a:b]])


@pytest.mark.parametrize("n", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE])
def test_sealed_sizes_ranges_and_seeking_round_trip(n: int) -> None:
    data = os.urandom(n)
    blob = b"".join(seal_stream(KEY, "att:x:original", _pieces(data, 7_000)))
    assert len(blob) == sealed_size(n) and plain_size(len(blob)) == n
    f = _sealed(blob)
    assert b"".join(f.iter_range()) == data
    for start, end in [(0, 1), (n // 3, n // 3 + CHUNK_SIZE), (n - 1, n)]:
        assert b"".join(f.iter_range(max(0, start), end)) == data[max(0, start) : end]
    with f.reader() as fp:
        fp.seek(n // 2)
        assert fp.read(100) == data[n // 2 : n // 2 + 100]
        fp.seek(0)
        assert fp.read() == data


def test_sealed_files_refuse_truncation_reordering_tampering_and_another_context() -> None:
    data = os.urandom(3 * CHUNK_SIZE + 10)
    blob = b"".join(seal_stream(KEY, "att:x:original", [data]))
    step = CHUNK_SIZE + TAG_BYTES
    cut = blob[: HEADER_BYTES + 2 * step]  # ends exactly on a chunk boundary
    chunks = [blob[HEADER_BYTES + i * step : HEADER_BYTES + (i + 1) * step] for i in range(3)]
    swapped = (
        blob[:HEADER_BYTES] + chunks[1] + chunks[0] + chunks[2] + blob[HEADER_BYTES + 3 * step :]
    )
    flipped = bytearray(blob)
    flipped[HEADER_BYTES + 5] ^= 1
    for bad, context in [
        (cut, "att:x:original"),
        (swapped, "att:x:original"),
        (bytes(flipped), "att:x:original"),
        (blob, "att:x:thumb"),
        (blob, "att:y:original"),
    ]:
        with pytest.raises(CorruptFile):
            b"".join(_sealed(bad, context).iter_range())
    other_key = b"\x01" * 32
    with pytest.raises(CorruptFile):
        b"".join(
            SealedFile(
                other_key, "att:x:original", len(blob), lambda a, b: [blob[a:b]]
            ).iter_range()
        )
    assert data[:64] not in blob


# --- content sniffing -------------------------------------------------------------------------


def _image(fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(out, fmt, **kw)
    return out.getvalue()


def _docx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document/>")
    return out.getvalue()


def _sniff(data: bytes, piece: int = 10) -> object:
    s = Sniffer()
    for i in range(0, len(data), piece):
        s.feed(data[i : i + piece])
    ftype = s.finish()
    return confirm(ftype, io.BytesIO(data)).type


ALLOWED_SAMPLES = [
    (JPEG, _image("JPEG")),
    (PNG, _image("PNG")),
    (GIF, _image("GIF")),
    (WEBP, _image("WEBP")),
    (PDF, b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"),
    (TXT, "héllo wörld ✓ — plain UTF-8 text\n".encode() * 40),
    (DOC, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500) + "WordDocument".encode("utf-16-le")),
    (DOCX, _docx()),
    (MP3, b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(100)),
    (MP3, b"\xff\xfb\x90\x64" + bytes(100)),
    (AAC, b"\xff\xf1\x50\x80" + bytes(100)),
    (OGG, b"OggS\x00\x02" + bytes(100)),
    (WAV, b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100)),
    (M4A, b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00" + bytes(100)),
    (MP4, b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00" + bytes(100)),
]


@pytest.mark.parametrize(("expected", "data"), ALLOWED_SAMPLES, ids=lambda v: getattr(v, "ext", ""))
def test_allowed_types_are_recognised_by_their_bytes(expected: object, data: bytes) -> None:
    assert _sniff(data) is expected


@pytest.mark.parametrize(
    "data",
    [
        b"MZ\x90\x00" + bytes(200),  # Windows executable
        b"\x7fELF" + bytes(200),  # ELF executable
        b"\x00\x00\x00\x18ftypqt  " + bytes(100),  # QuickTime
        b"\x00\x00\x00\x18ftypheic" + bytes(100),  # HEIC
        b"text with a NUL \x00 byte" * 10,
        b"latin-1 \xe9t\xe9 is not UTF-8" * 10,
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600),  # OLE2, but no Word stream
        b"\x89PNG\r\n\x1a\n" + os.urandom(200),  # PNG magic, garbage after
        b"",
    ],
    ids=["exe", "elf", "quicktime", "heic", "nul", "latin1", "ole2", "fake-png", "empty"],
)
def test_types_off_the_allow_list_or_lying_about_themselves_are_rejected(data: bytes) -> None:
    with pytest.raises(Rejected):
        _sniff(data)


def test_a_zip_without_word_content_is_not_a_docx() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("payload.exe", b"MZ")
    with pytest.raises(Rejected):
        _sniff(out.getvalue())


def test_an_unreachable_s3_is_a_temporary_storage_error_not_a_missing_object() -> None:
    """The media stage retries StorageUnavailable (an OSError); ObjectMissing means gone."""
    from botocore.config import Config

    from storage import StorageUnavailable

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    store = S3Storage("nowhere", client=client)
    for call in (lambda: store.size("k"), lambda: store.put("k", [b"x"]), lambda: store.open("k")):
        with pytest.raises(StorageUnavailable) as caught:
            call()
        assert isinstance(caught.value, OSError) and not isinstance(caught.value, ObjectMissing)


# --- local storage under concurrency ----------------------------------------------------------

# One side of the race, run in its own interpreter: store an object under the shared prefix,
# read it back, delete it (so the directory empties and is pruned, as a deleted upload's is),
# every 25th time keep an object outside that prefix, to be checked at the end, and list the
# keys (walking the directories the other process prunes).
_CHURN = """
import json, sys, time
from pathlib import Path
from storage.local import LocalStorage

root, who, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = LocalStorage(root)
(go.parent / f"ready-{who}").touch()
while not go.exists():
    time.sleep(0.001)
failures, kept = [], set()
for n in range(count):
    key, data, step = f"uploads/c1/{who}-{n}", f"{who}:{n}:".encode() * 50, "put"
    try:
        store.put(key, [data[:100], data[100:]])
        step = "open"
        if b"".join(store.open(key)) != data:
            failures.append(f"{key} read back wrong bytes")
        step = "delete"
        store.delete(key)
        step = "keep"
        if n % 25 == 0:
            store.put(f"kept/{who}/{n}", [data])
            kept.add(f"kept/{who}/{n}")
        step = "keys"
        if not kept <= set(store.keys("kept/")):
            failures.append(f"keys() after {key} misses kept objects")
    except Exception as exc:
        failures.append(f"{step} {key}: {exc!r}")
print(json.dumps(failures))
"""


def test_local_stores_and_deletes_racing_in_two_processes_never_fail(tmp_path: Path) -> None:
    """Issue #14: a delete prunes the directories it empties, up to the root, while another
    process's put has just made that directory and is about to create its temp file in it.
    Two real processes store and delete 2,000 objects each under one shared directory: no
    store, delete or listing may fail, each object reads back whole while stored, none is left
    over, and the objects kept outside the churn are all there with their bytes."""
    root, go, count = tmp_path / "files", tmp_path / "go", 2000
    procs = {
        who: subprocess.Popen(
            [sys.executable, "-c", _CHURN, str(root), who, str(count), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for who in ("a", "b")
    }
    failures: list[str] = []
    try:
        wait_for(lambda: all((tmp_path / f"ready-{w}").exists() for w in procs), 30, what="ready")
        go.touch()  # both start together, so the two loops overlap the whole way
        for who, proc in procs.items():
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"process {who} crashed: {err.decode()}"
            failures += json.loads(out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert failures == [], f"{len(failures)} of {2 * count} failed, e.g. {failures[:3]}"
    store = LocalStorage(root)
    kept = {f"kept/{w}/{n}": f"{w}:{n}:".encode() * 50 for w in procs for n in range(0, count, 25)}
    assert sorted(store.keys()) == sorted(kept), "only the kept objects remain"
    for key, data in kept.items():
        assert b"".join(store.open(key)) == data
    assert not [p for p in root.rglob(".tmp-*")], "no temp file is left behind"
