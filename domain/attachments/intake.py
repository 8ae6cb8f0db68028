"""Upload intake: who may upload where, the checks a file passes while it streams in, the
spool it streams into, and the row that records an accepted upload.

Nothing here keeps file bytes: the web view streams each piece through `Intake.feed` and on
into the sealed `Spool`, and `Intake.finish` reads the spool back for the checks that need the
whole file.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import BinaryIO

from sqlalchemy.orm import Session

from core import crypto
from core.filecrypt import seal_stream
from core.services import Services
from domain import outbox
from domain.attachments.processing import MEDIA_TASK
from domain.attachments.stored import (
    filename_aad,
    sealed,
    storage_for,
    upload_context,
    upload_key,
    upload_key_aad,
)
from domain.conversations import membership
from domain.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    TooLarge,
    UnsupportedType,
)
from domain.keys import conversation_key
from domain.principals import Principal
from models import Attachment, Conversation
from storage.sniff import Confirmed, FileType, Rejected, Sniffer, TooManyPixels, confirm

logger = logging.getLogger(__name__)

FILENAME_MAX = 200


_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069/\\:*?\"<>|]+")


def sanitize_filename(raw: str | None, ftype: FileType) -> str:
    """A display name that cannot be a path, hide its extension (RTL override) or break a
    header: the last path part, control and bidi characters removed, at most FILENAME_MAX
    characters, with the extension of the type we detected (not the one claimed)."""
    name = unicodedata.normalize("NFC", raw or "")
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE.sub("_", name).strip(" ._")
    stem, dot, _ = name.rpartition(".")
    if not dot:
        stem = name
    stem = stem[: FILENAME_MAX - len(ftype.ext) - 1].rstrip(" ._") or "file"
    return f"{stem}.{ftype.ext}"


def uploadable(session: Session, who: Principal, cid: str) -> Conversation:
    """The conversation an upload is bound to: the caller must be able to post in it."""
    user = who.require_user()
    conv = session.get(Conversation, cid)
    part = membership(session, cid, user) if conv is not None else None
    if conv is None or part is None:
        raise NotFound(f"conversation {cid} does not exist or you are not a participant")
    if part.role == "observer":
        raise Forbidden("observers cannot upload to this conversation")
    if conv.status != "active":
        raise Conflict(f"the conversation is {conv.status}; reopen it to upload")
    return conv


class Intake:
    """The checks an upload goes through while it streams in, and once it is complete.

    Raises TooLarge (413) as soon as the file passes its limit (images have a lower one than
    other files, known once the first bytes are sniffed) and UnsupportedType (415) as soon as
    the bytes show a type off the allow-list. Keeps no file bytes beyond the sniffed head.
    """

    def __init__(self, svc: Services) -> None:
        self.settings = svc.settings
        self.size = 0
        self._sniffer = Sniffer()
        self._limit = max(self.settings.max_file_bytes, self.settings.max_image_bytes)

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        try:
            ftype = self._sniffer.feed(piece)
        except Rejected as exc:
            raise UnsupportedType(exc.reason, {"file": [exc.reason]}) from exc
        if ftype is not None:
            self._limit = (
                self.settings.max_image_bytes
                if ftype.kind == "image"
                else self.settings.max_file_bytes
            )
        if self.size > self._limit:
            what = "an image" if ftype is not None and ftype.kind == "image" else "a file"
            raise TooLarge(
                f"{what} may be at most {self._limit} bytes",
                {"file": [f"larger than {self._limit} bytes"]},
            )

    def finish(self, open_spool: Callable[[], BinaryIO]) -> Confirmed:
        """Final checks on the complete upload, reading the sealed spool where needed."""
        try:
            ftype = self._sniffer.finish()
        except Rejected as exc:
            status = Invalid if exc.reason == "the file is empty" else UnsupportedType
            raise status(exc.reason, {"file": [exc.reason]}) from exc
        try:
            with open_spool() as fp:
                found = confirm(ftype, fp)
        except TooManyPixels as exc:
            raise Invalid(exc.reason, {"file": [exc.reason]}) from exc
        except Rejected as exc:
            raise UnsupportedType(exc.reason, {"file": [exc.reason]}) from exc
        cap = self.settings.max_image_pixels
        if found.width is not None and found.height is not None:
            pixels = found.width * found.height
            if pixels > cap:
                reason = f"the image has {pixels} pixels; the limit is {cap}"
                raise Invalid(reason, {"file": [reason]})
        return found


class Spool:
    """Where an upload streams before it is accepted: `uploads/<id>` in storage, sealed as it
    arrives under a fresh key of its own, since the conversation (and so its data key) may be
    named only after the file. `create` seals that key into the row."""

    def __init__(self, svc: Services, att_id: str) -> None:
        self.store = storage_for(svc)
        self.key = upload_key(att_id)
        self.secret = crypto.new_data_key()
        self._context = upload_context(att_id)

    def write(self, pieces: Iterable[bytes]) -> None:
        self.store.put(self.key, seal_stream(self.secret, self._context, pieces))

    def reader(self) -> BinaryIO:
        """The plaintext, decrypted as it is read (for the checks that need the whole file)."""
        return sealed(self.store, self.key, self.secret, self._context).reader()

    def discard(self) -> None:
        """Delete what was written (a refused upload leaves no bytes); safe to repeat."""
        self.store.delete(self.key)


def create(
    svc: Services,
    session: Session,
    who: Principal,
    conv: Conversation,
    att_id: str,
    *,
    found: Confirmed,
    size: int,
    filename: str,
    spool: Spool,
) -> Attachment:
    """Record the accepted upload and queue the media stage, in the caller's transaction."""
    dk = conversation_key(svc, session, conv)
    dek = svc.keyring.data_key(dk)
    att = Attachment(
        id=att_id,
        conversation_id=conv.id,
        uploader_id=who.require_user(),
        state="processing",
        kind=found.type.kind,
        content_type=found.type.mime,
        key_id=dk,
        filename_ct=crypto.seal(dek, filename.encode(), filename_aad(att_id)),
        upload_key_ct=crypto.seal(dek, spool.secret, upload_key_aad(att_id)),
        size=size,
        width=found.width,
        height=found.height,
        variants={},
    )
    session.add(att)
    outbox.add(session, MEDIA_TASK, [att_id], ref_id=att_id)
    session.flush()
    logger.info(
        "attachment accepted",
        extra={"attachment_id": att_id, "conversation_id": conv.id, "kind": att.kind},
    )
    return att
