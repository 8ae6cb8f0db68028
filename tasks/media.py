"""Media stage: turn an accepted upload (the sealed spool) into its stored variants.

Images are decoded, bounded (pixel cap), oriented, stripped of every piece of metadata and
re-encoded, with thumbnails; other files are re-sealed as they are. Each variant is sealed under
the conversation's data key and written atomically, so a re-run (redelivery, the outbox
sweeper) finds what already exists and makes only what is missing. The spool goes once every
variant exists, and the state moves processing → ready | rejected by compare-and-set, with the
`attachment.ready` event in the same transaction: two runs announce once.

The plaintext exists only in this process's memory: the spool is read through a decrypting,
seekable reader, and outputs are sealed on their way to storage.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from sqlalchemy import select

from core.crypto import MissingKeyError
from core.filecrypt import CorruptFile, SealedFile, seal_stream
from core.services import Services, services
from domain import attachments as atts
from models import Attachment
from storage import ObjectMissing, Storage
from storage.imaging import ImageRejected, Rendition, sanitized_original, thumbnails, variants_for
from storage.sniff import ALLOWED, FileType
from tasks.retry import PIPELINE, TEMPORARY

logger = logging.getLogger(__name__)

# Storage hiccups (disk full, S3 5xx, network: OSError, StorageUnavailable) are temporary too.
MEDIA_RETRY: dict[str, Any] = {**PIPELINE, "autoretry_for": (*TEMPORARY, OSError)}
_TYPES = {t.mime: t for t in ALLOWED}


class Unrecoverable(Exception):
    """The upload cannot become an attachment; `reason` is shown to the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@shared_task(name=atts.MEDIA_TASK, **MEDIA_RETRY)
def process_attachment(attachment_id: str) -> None:
    process(attachment_id)


def process(attachment_id: str) -> str:
    """Run the stage for one attachment; returns its state afterwards."""
    svc = services()
    extra = {"attachment_id": attachment_id}
    with svc.ReadSession() as s:
        att = s.get(Attachment, attachment_id)
    if att is None:
        logger.warning("media: attachment gone", extra=extra)
        return "missing"
    if att.state != "processing":  # done by an earlier run: only the outbox row may be left
        if att.state == "rejected":
            atts.purge_files(svc, att)  # in case that run died between its commit and purge
        with svc.Session.begin() as s:
            atts.mark_media_done(s, attachment_id)
        return att.state
    store = atts.storage_for(svc)
    try:
        outcome = _produce(svc, store, att)
    except (Unrecoverable, ImageRejected) as exc:
        return _reject(svc, att, exc.reason)
    except CorruptFile:  # a stored variant does not open: never serve it
        return _reject(svc, att, "a stored file failed its integrity check")
    store.delete(atts.upload_key(att.id))  # every variant exists: the spool has served
    with svc.Session.begin() as s:
        changed = atts.finish(s, att, state="ready", **outcome)
    logger.info(
        "media: ready" if changed else "media: already finished by another run",
        extra={**extra, "variants": sorted(outcome["variants"])},
    )
    return "ready"


def _reject(svc: Services, att: Attachment, reason: str) -> str:
    """A rejected upload leaves no bytes behind: the spool and any variant made so far.

    The state changes first: a run that lost a race with a successful one (and so found the
    spool gone) must not delete the files of a ready attachment."""
    with svc.Session.begin() as s:
        changed = atts.finish(s, att, state="rejected", reason=reason)
    if not changed:
        logger.info("media: finished by another run", extra={"attachment_id": att.id})
        with svc.ReadSession() as s:
            return str(s.scalar(select(Attachment.state).where(Attachment.id == att.id)))
    atts.purge_files(svc, att)
    logger.info("media: rejected", extra={"attachment_id": att.id, "reason": reason})
    return "rejected"


def _produce(svc: Services, store: Storage, att: Attachment) -> dict[str, Any]:
    """Write the variants still missing; describe all of them."""
    ftype = _TYPES.get(att.content_type)
    if ftype is None:
        raise Unrecoverable("the file type is no longer allowed")
    try:
        dek = svc.keyring.data_key(att.key_id)
    except MissingKeyError as exc:
        raise Unrecoverable("the conversation's key is gone") from exc
    key = atts.object_key(att.conversation_id, att.id, atts.ORIGINAL)
    spool = None
    if not store.exists(key):
        spool = _spool(svc, att)
        if ftype.kind == "image":
            with spool.reader() as fp:
                _put(store, att, dek, sanitized_original(fp, ftype, _cap(svc)))
        else:
            store.put(key, seal_stream(dek, atts.file_context(att.id, atts.ORIGINAL), _copy(spool)))
    original = _describe(store, att, dek, atts.ORIGINAL, ftype)
    variants = {atts.ORIGINAL: original}
    if ftype.kind == "image":
        names = variants_for(original["width"], original["height"])
        missing = [
            n for n in names if not store.exists(atts.object_key(att.conversation_id, att.id, n))
        ]
        if missing:
            spool = spool or _spool(svc, att)
            with spool.reader() as fp:
                for rendition in thumbnails(fp, ftype, _cap(svc), missing):
                    _put(store, att, dek, rendition)
        for name in names:
            variants[name] = _describe(store, att, dek, name, None)
    return {
        "variants": variants,
        "size": original["size"],
        "width": original.get("width"),
        "height": original.get("height"),
    }


def _cap(svc: Services) -> int:
    return svc.settings.max_image_pixels


def _spool(svc: Services, att: Attachment) -> SealedFile:
    try:
        return atts.open_upload(svc, att)
    except ObjectMissing as exc:
        raise Unrecoverable("the upload was lost before it could be processed") from exc
    except (CorruptFile, MissingKeyError, ValueError) as exc:
        raise Unrecoverable("the upload cannot be read back") from exc


def _copy(spool: SealedFile) -> Any:
    try:
        yield from spool.iter_range()
    except CorruptFile as exc:
        raise Unrecoverable("the upload cannot be read back") from exc


def _put(store: Storage, att: Attachment, dek: bytes, r: Rendition) -> None:
    key = atts.object_key(att.conversation_id, att.id, r.variant)
    store.put(key, seal_stream(dek, atts.file_context(att.id, r.variant), [r.data]))


def _describe(
    store: Storage, att: Attachment, dek: bytes, variant: str, ftype: FileType | None
) -> dict[str, Any]:
    """What a stored variant is (size, and for images type and dimensions from its header):
    read back rather than remembered, so a re-run that made nothing can still describe it."""
    from PIL import Image

    key = atts.object_key(att.conversation_id, att.id, variant)
    obj = atts.sealed(store, key, dek, atts.file_context(att.id, variant))
    meta: dict[str, Any] = {"size": obj.size}
    if ftype is not None and ftype.kind != "image":
        meta["content_type"] = ftype.mime
        return meta
    with obj.reader() as fp, Image.open(fp) as im:
        meta.update(
            content_type=Image.MIME.get(im.format or "", "application/octet-stream"),
            width=im.width,
            height=im.height,
        )
    return meta
