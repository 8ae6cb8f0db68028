"""Attachments: who may upload, see, attach and download them, and what each step changes.

An upload streams into storage sealed under a fresh per-upload key (the spool), because the
multipart body may name its conversation only after the file. The spool key is then sealed
under the conversation's data key in the attachment row. The media stage (tasks/media.py)
turns the spool into the stored variants, each sealed directly under the conversation's data
key with its own context (`att:<id>:<variant>`), and removes the spool. Downloads go through
signed, expiring URLs bound to one user, checked again against that user's rights.

| module | holds |
| --- | --- |
| `stored` | storage keys, sealing contexts, opening and purging stored objects |
| `intake` | upload rights, the streaming checks, the filename, the accepted row |
| `processing` | the media stage's outcome (processing → ready / rejected) |
| `access` | who may see an attachment; a conversation's shared media |
| `attaching` | which uploads a new message may carry, each once |
| `views` | the JSON shape, alone or embedded in a message |
| `downloads` | signed, expiring download URLs |

The package re-exports what other parts of the domain use (messages, rendering, retention,
erasure and export). The web views import the module they need. `access` is not re-exported:
it reads `domain.messages`, which imports this package.
"""

from domain.attachments.attaching import MESSAGE_KINDS, attach_to_message, check_attachable
from domain.attachments.processing import MEDIA_TASK, READY_EVENT, finish, mark_media_done
from domain.attachments.stored import (
    ORIGINAL,
    VARIANTS,
    file_context,
    filename,
    object_key,
    open_upload,
    open_variant,
    purge_files,
    sealed,
    storage_for,
    upload_key,
)
from domain.attachments.views import for_message

__all__ = [
    "MEDIA_TASK",
    "MESSAGE_KINDS",
    "ORIGINAL",
    "READY_EVENT",
    "VARIANTS",
    "attach_to_message",
    "check_attachable",
    "file_context",
    "filename",
    "finish",
    "for_message",
    "mark_media_done",
    "object_key",
    "open_upload",
    "open_variant",
    "purge_files",
    "sealed",
    "storage_for",
    "upload_key",
]
