"""Where an attachment's bytes live, and what each stored object is bound to.

Keys are grouped per conversation (`attachments/<conversation>/<id>/<variant>`), so erasing a
conversation is one prefix; the spool an upload streams into is `uploads/<id>`. Each object is
sealed with a context naming its attachment and variant, so bytes copied to another key do not
open, and the filename is sealed like message text.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from core import crypto
from core.filecrypt import SealedFile, seal_stream
from core.services import Services
from domain.errors import NotFound
from models import Attachment
from storage import Storage, open_storage
from storage.imaging import SCALED, THUMB

ORIGINAL = "original"
VARIANTS = (ORIGINAL, THUMB, *SCALED)


_backends: dict[int, Storage] = {}  # id(Services) → its backend, dropped with the Services


def storage_for(svc: Services) -> Storage:
    """The storage backend of these services, built once (an S3 client is costly to make).

    Keyed by the Services object, not a Flask app: web views, tasks and the CLI all reach it
    the same way, and two stacks in one process (the tests) never share one by accident."""
    store = _backends.get(id(svc))
    if store is None:
        store = _backends[id(svc)] = open_storage(svc.settings)
        # before `svc`'s id can be reused by another object, its entry goes
        weakref.finalize(svc, _backends.pop, id(svc), None)
    return store


def upload_key(att_id: str) -> str:
    return f"uploads/{att_id}"


def object_key(conversation_id: str, att_id: str, variant: str) -> str:
    # grouped per conversation, so erasing a conversation is one prefix
    return f"attachments/{conversation_id}/{att_id}/{variant}"


def file_context(att_id: str, variant: str) -> str:
    return f"att:{att_id}:{variant}"


def upload_context(att_id: str) -> str:
    return file_context(att_id, "upload")


def filename_aad(att_id: str) -> bytes:
    return f"attname:{att_id}".encode()


def upload_key_aad(att_id: str) -> bytes:
    return f"attkey:{att_id}".encode()


def sealed(store: Storage, key: str, dek: bytes, context: str) -> SealedFile:
    """Random access to one stored object (ObjectMissing when it is not there)."""
    return SealedFile(dek, context, store.size(key), lambda a, b: store.open(key, a, b))


def open_upload(svc: Services, att: Attachment) -> SealedFile:
    if att.upload_key_ct is None:
        raise NotFound("the upload was already processed")
    spool_key = crypto.open_sealed(
        svc.keyring.data_key(att.key_id), att.upload_key_ct, upload_key_aad(att.id)
    )
    return sealed(storage_for(svc), upload_key(att.id), spool_key, upload_context(att.id))


def open_variant(svc: Services, att: Attachment, variant: str) -> SealedFile:
    return variant_file(storage_for(svc), att, svc.keyring.data_key(att.key_id), variant)


def variant_file(store: Storage, att: Attachment, dek: bytes, variant: str) -> SealedFile:
    """A stored variant, opened with the conversation's data key `dek`."""
    key = object_key(att.conversation_id, att.id, variant)
    return sealed(store, key, dek, file_context(att.id, variant))


def has_variant(store: Storage, att: Attachment, variant: str) -> bool:
    return store.exists(object_key(att.conversation_id, att.id, variant))


def write_variant(
    store: Storage, att: Attachment, dek: bytes, variant: str, chunks: Iterable[bytes]
) -> None:
    """Seal `chunks` as the variant, under the conversation's data key (atomic, streamed)."""
    key = object_key(att.conversation_id, att.id, variant)
    store.put(key, seal_stream(dek, file_context(att.id, variant), chunks))


def purge_files(svc: Services, att: Attachment) -> None:
    """Delete every stored byte of an attachment (spool and variants); safe to repeat. For the
    media stage's rejections, and for retention and erasure."""
    store = storage_for(svc)
    store.delete(upload_key(att.id))
    for variant in VARIANTS:
        store.delete(object_key(att.conversation_id, att.id, variant))


def filename(svc: Services, att: Attachment) -> str:
    return svc.keyring.open_text(att.key_id, att.filename_ct, filename_aad(att.id).decode())
