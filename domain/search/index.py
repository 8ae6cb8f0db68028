"""The blind index: each term of a message stored only as a keyed 64-bit hash.

The key is derived (HKDF) from the data key the message is sealed under, so shredding a
conversation's keys makes its tokens meaningless, and tokens of one conversation say nothing
about another's. A message's tokens are replaced as a whole (delete, then insert, in the
caller's transaction), so a stage that runs twice leaves the same rows.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.services import Services
from domain import outbox
from domain.keys import message_aad
from domain.search.text import index_terms
from models import Message, SearchToken

logger = logging.getLogger(__name__)

INDEX_TASK = "tasks.index.index_messages"
TOKEN_BYTES = 8


def index_key(svc: Services, dk_id: str) -> bytes:
    """The conversation data key's search key (raises MissingKeyError once it is shredded)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"parley-search-index:v1:" + dk_id.encode(),
    ).derive(svc.keyring.data_key(dk_id))


def token(key: bytes, term: tuple[str, str]) -> int:
    """A term's token: HMAC-SHA256 truncated to a signed 64-bit integer. The kind ("t" full
    term, "p" prefix) separates the domains, so a prefix never equals a term."""
    kind, value = term
    digest = hmac.new(key, kind.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:TOKEN_BYTES], "big", signed=True)


def tokens(key: bytes, terms: Iterable[tuple[str, str]]) -> set[int]:
    return {token(key, t) for t in terms}


def remove(session: Session, conversation_id: str, seq: int) -> None:
    """Drop a message's tokens (a soft delete, or before they are written again)."""
    session.execute(
        delete(SearchToken).where(
            SearchToken.conversation_id == conversation_id, SearchToken.seq == seq
        )
    )


def replace(
    svc: Services, session: Session, conversation_id: str, seq: int, dk_id: str, text: str
) -> int:
    """Make the message's tokens those of `text` under `dk_id`'s search key; returns how many."""
    remove(session, conversation_id, seq)
    found = tokens(index_key(svc, dk_id), index_terms(text))
    if found:
        rows = [{"conversation_id": conversation_id, "seq": seq, "token": t} for t in found]
        dialect = postgresql if svc.dialect == "postgresql" else sqlite
        # A concurrent run of the same stage may have inserted them after our delete.
        session.execute(dialect.insert(SearchToken).on_conflict_do_nothing(), rows)
    return len(found)


def index_messages(svc: Services, conversation_id: str, message_ids: Sequence[str]) -> int:
    """The index stage: (re)write the tokens of these messages, mark the stage done. Messages
    gone, deleted, expired or without text get no tokens. Returns the tokens written."""
    written = 0
    with svc.Session.begin() as s:
        rows = s.execute(
            select(
                Message.id,
                Message.seq,
                Message.key_id,
                Message.text_ct,
                Message.deleted_at,
                Message.expired_at,
            ).where(Message.id.in_(message_ids), Message.conversation_id == conversation_id)
        ).all()
        for mid, seq, dk_id, blob, deleted_at, expired_at in rows:
            if dk_id is None or blob is None or deleted_at is not None or expired_at is not None:
                remove(s, conversation_id, seq)
                continue
            try:
                text = svc.keyring.open_text(dk_id, blob, message_aad(mid))
                written += replace(svc, s, conversation_id, seq, dk_id, text)
            except MissingKeyError:  # the conversation was deleted meanwhile: nothing to index
                remove(s, conversation_id, seq)
        outbox.mark_done(s, list(message_ids), INDEX_TASK)
    logger.info(
        "indexed %d message(s), %d token(s)",
        len(rows),
        written,
        extra={"conversation_id": conversation_id},
    )
    return written


def hand_off(session: Session, conversation_id: str, message_ids: Sequence[str]) -> None:
    """Queue the index stage for messages whose verdict this transaction commits (outbox-backed:
    sent after the commit, re-sent by the sweeper if the broker lost it)."""
    if message_ids:
        outbox.add(session, INDEX_TASK, [conversation_id, list(message_ids)], message_ids[0])
