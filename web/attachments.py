"""Attachments: streamed upload, metadata with signed URLs, the media list, signed downloads."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import quote

from flask import Blueprint, Response, request
from werkzeug.datastructures import ContentRange
from werkzeug.exceptions import BadRequest, UnsupportedMediaType
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from core.filecrypt import CorruptFile, SealedFile
from core.ids import new_id, utcnow
from core.services import services
from domain.attachments import access, downloads, intake, stored, views
from domain.errors import Forbidden, Invalid, NotFound
from web.auth import current, require_auth
from web.errors import problem
from web.http import doc, form_field, query_args
from web.schemas.attachments import (
    AttachmentListQuery,
    AttachmentPageSchema,
    AttachmentSchema,
    AttachmentUploadForm,
    DownloadQuery,
)

logger = logging.getLogger(__name__)

bp = Blueprint("attachments", __name__, url_prefix="/v1")
api = Blueprint("api", __name__)  # bearer-authenticated
files = Blueprint("files", __name__)  # the signed URL is the credential (works in <img src>)
api.before_request(require_auth)

READ_BYTES = 64 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart framing and the small fields around the file
FIELD_BYTES = 1024
FORM_FIELDS = ("conversation_id",)


@api.post("/attachments")
@doc(
    "Upload a file (multipart: conversation_id, then file; 202: processing)",
    form=AttachmentUploadForm,
    responses={202: AttachmentSchema},
    tag="attachments",
)
def upload() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Stream a file into sealed storage; the media stage then makes it ready or rejects it."""
    svc = services()
    who = current()
    who.require_user()
    boundary = _boundary()
    # Flask 3.1: the body limit can be raised for this request alone (JSON routes keep theirs).
    request.max_content_length = (
        max(svc.settings.max_file_bytes, svc.settings.max_image_bytes) + FORM_OVERHEAD
    )
    att_id = new_id()
    spool = intake.Spool(svc, att_id)
    checks = intake.Intake(svc)
    form: dict[str, str] = {}

    def early_check(name: str, value: str) -> None:
        """Refuse a foreign conversation before its file streams in, when it comes first."""
        if name == "conversation_id":
            with svc.ReadSession() as s:
                intake.uploadable(s, who, value)

    try:
        spool.write(_file_pieces(request.stream, boundary, form, checks, early_check))
        missing = {f: ["required"] for f in ("file", *FORM_FIELDS) if f not in form}
        if missing:
            raise Invalid(f"missing form fields: {', '.join(sorted(missing))}", missing)
        found = checks.finish(spool.reader)
        with svc.Session.begin() as s:
            conv = intake.uploadable(s, who, form["conversation_id"])
            att = intake.create(
                svc,
                s,
                who,
                conv,
                att_id,
                found=found,
                size=checks.size,
                filename=intake.sanitize_filename(form["file"], found.type),
                spool=spool,
            )
            out = views.view(svc, att)
    except BaseException:
        spool.discard()  # bad input leaves nothing behind
        raise
    return out, 202, {"Location": f"/v1/attachments/{att_id}"}


def _boundary() -> bytes:
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("send the file as multipart/form-data (field 'file')")
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary:
        raise BadRequest("the multipart Content-Type has no boundary")
    return boundary.encode("latin-1")


def _file_pieces(
    stream: IO[bytes],
    boundary: bytes,
    form: dict[str, str],
    checks: intake.Intake,
    on_field: Callable[[str, str], None],
) -> Iterator[bytes]:
    """Parse the multipart body as it arrives, yielding the file's bytes (after the intake
    `checks`) and collecting the small fields into `form` (form["file"] = the client's name).

    Werkzeug's own form parser would spool files to a plaintext temporary file; this one
    keeps only the current piece in memory and hands it straight to the sealer."""
    # The decoder's own memory cap counts file data too; its buffer stays within one read
    # (plus a partial boundary) anyway, and small fields are capped below.
    decoder = MultipartDecoder(boundary, max_parts=10)
    part: Field | File | None = None
    in_file = False
    value = bytearray()
    while True:
        data = stream.read(READ_BYTES)
        decoder.receive_data(data or None)
        try:
            event = decoder.next_event()
            while not isinstance(event, Epilogue | NeedData):
                if isinstance(event, File | Field) and event.name == "file":
                    if "file" in form:
                        raise Invalid("send exactly one file", {"file": ["more than one"]})
                    part, in_file = event, True  # with or without a filename
                    form["file"] = event.filename if isinstance(event, File) else ""
                elif isinstance(event, File | Field):
                    if event.name not in FORM_FIELDS or event.name in form:
                        raise Invalid(
                            f"unexpected form field {event.name!r}", {event.name: ["unknown field"]}
                        )
                    part, in_file, value = event, False, bytearray()
                elif isinstance(event, Data) and in_file:
                    if event.data:
                        checks.feed(event.data)
                        yield event.data
                elif isinstance(event, Data) and part is not None:
                    value += event.data
                    if len(value) > FIELD_BYTES:
                        raise Invalid(
                            f"form field {part.name!r} is too long", {part.name: ["too long"]}
                        )
                    if not event.more_data:
                        text = form_field(part.name, bytes(value))  # before on_field queries
                        form[part.name] = text
                        on_field(part.name, text)
                event = decoder.next_event()
        except ValueError as exc:  # werkzeug's word for a malformed body
            raise BadRequest(f"the multipart body is malformed: {exc}") from exc
        if isinstance(event, Epilogue) or not data:
            if not isinstance(event, Epilogue):
                raise BadRequest("the multipart body ended early")
            return


@api.get("/attachments/<aid>")
@doc(
    "Get an attachment with fresh signed URLs", responses={200: AttachmentSchema}, tag="attachments"
)
def get_attachment(aid: str) -> dict[str, Any]:
    """Metadata and download URLs (valid PARLEY_DOWNLOAD_TTL_S seconds, for the caller only)."""
    svc = services()
    who = current()
    with svc.ReadSession() as s:
        att, part = access.visible(s, who.user_id, aid)
        return views.view(svc, att, links=downloads.DownloadLinks(svc, part.user_id))


@api.get("/conversations/<cid>/attachments")
@doc(
    "List a conversation's shared media, newest first",
    query=AttachmentListQuery,
    responses={200: AttachmentPageSchema},
    tag="attachments",
)
def list_attachments(cid: str) -> dict[str, Any]:
    """Ready attachments of the messages the caller can see, with signed URLs."""
    q = query_args(AttachmentListQuery())
    svc = services()
    who = current()
    with svc.ReadSession() as s:
        rows, next_cursor = access.list_page(
            s, who, cid, kind=q.get("kind"), cursor=q.get("cursor"), limit=q["limit"]
        )
        links = downloads.DownloadLinks(svc, who.require_user())  # one expiry for the page
        items = [views.view(svc, a, links=links, seq=seq) for a, seq in rows]
    return {"items": items, "next_cursor": next_cursor}


@files.get("/attachments/<aid>/content/<variant>")
@doc(
    "Download an attachment (signed URL; Range supported)",
    query=DownloadQuery,
    auth=False,
    tag="attachments",
)
def download(aid: str, variant: str) -> Response:
    """Stream the decrypted bytes; 206 for a satisfiable Range, 416 for one that is not."""
    q = query_args(DownloadQuery())
    svc = services()
    user = q["u"]
    downloads.check_link(svc, aid, variant, user, expires=q["exp"], sig=q["sig"])
    with svc.ReadSession() as s:
        try:
            att, _ = access.visible(s, user, aid)
        except NotFound as exc:
            raise Forbidden("this link's user can no longer see the attachment") from exc
        meta = (att.variants or {}).get(variant)
        if att.state != "ready" or meta is None:
            raise NotFound(f"attachment {aid} has no {variant!r} to download")
        obj = stored.open_variant(svc, att, variant)
        name = _variant_filename(stored.filename(svc, att), variant, meta["content_type"])
    return _send(obj, meta["content_type"], name, f'"{aid}.{variant}.{obj.size}"', q["exp"])


def _send(obj: SealedFile, ctype: str, name: str, etag: str, expires: int) -> Response:
    start, end, status = 0, obj.size, 200
    header = request.headers.get("Range", "")
    if header.strip().lower().startswith("bytes") and _if_range_matches(etag):
        rng = request.range
        span = rng.range_for_length(obj.size) if rng is not None else None
        if span is not None:
            (start, end), status = span, 206
        elif rng is None or len(rng.ranges) == 1:
            return problem(
                416,
                "Range Not Satisfiable",
                f"the file is {obj.size} bytes; the requested range is outside it or malformed",
                headers={"Content-Range": f"bytes */{obj.size}"},
            )
        # several ranges: answer with the whole file (RFC 9110 lets a server ignore Range)
    if ctype == "text/plain":
        ctype = "text/plain; charset=utf-8"
    resp = Response(_body(obj, start, end), status=status, content_type=ctype)
    resp.direct_passthrough = True
    resp.headers["Content-Length"] = str(end - start)
    if status == 206:
        resp.headers["Content-Range"] = ContentRange("bytes", start, end, obj.size).to_header()
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["ETag"] = etag
    resp.headers["Content-Disposition"] = content_disposition(name)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = (
        f"private, max-age={max(0, expires - int(utcnow().timestamp()))}"
    )
    return resp


def _if_range_matches(etag: str) -> bool:
    """If-Range with another validator means the client's copy is stale: send it all."""
    condition = request.headers.get("If-Range")
    return condition is None or condition.strip() == etag


def _body(obj: SealedFile, start: int, end: int) -> Iterator[bytes]:
    try:
        yield from obj.iter_range(start, end)
    except CorruptFile:
        logger.error("stored attachment failed its integrity check; download aborted")
        raise


def _variant_filename(original: str, variant: str, ctype: str) -> str:
    if variant == stored.ORIGINAL:
        return original
    stem = original.rpartition(".")[0] or original
    ext = {"image/jpeg": "jpg", "image/webp": "webp", "image/png": "png"}.get(ctype, "bin")
    return f"{stem}-{variant}.{ext}"


def content_disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback for old clients, the exact UTF-8 name in filename*."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = "".join(c if c.isprintable() and c not in '"\\' else "_" for c in ascii_name)
    return (
        f"attachment; filename=\"{ascii_name or 'file'}\"; filename*=UTF-8''{quote(name, safe='')}"
    )


bp.register_blueprint(api)
bp.register_blueprint(files)
