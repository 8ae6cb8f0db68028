"""A finished export: where its sealed zip lives, the signed link that serves it, and its end.

The zip is sealed under a data key of its own (a `data_keys` row with no conversation), so
deleting that row shreds it. It is served decrypted through a link signed with
domain/signed_urls.py that expires after `PARLEY_DOWNLOAD_TTL_S` (each job status mints a
fresh one); the zip itself goes, and its key is shredded, after `PARLEY_EXPORT_KEEP_S`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.crypto import MissingKeyError
from core.services import Services
from domain.errors import NotFound
from domain.retention.shredding import forget_keys
from domain.signed_urls import UrlSigner, signer_for
from models import DataKey, Job

if TYPE_CHECKING:
    from core.filecrypt import SealedFile

EXPORT = "gdpr_export"  # the jobs.kind of exports


def storage(svc: Services) -> Any:
    from domain.attachments import storage_for

    return storage_for(svc)


def export_object(job_id: str) -> str:
    return f"exports/{job_id}"


def export_context(job_id: str) -> str:
    return f"export:{job_id}"


def _signer(svc: Services) -> UrlSigner:
    return signer_for(svc, "gdpr-export", renew="ask the job status for a new one")


def download_url(svc: Services, job_id: str, expires: int) -> str:
    return f"/v1/privacy/jobs/{job_id}/download?{_signer(svc).query(job_id, expires=expires)}"


def check_signature(svc: Services, job_id: str, expires: int, sig: str) -> None:
    """403 unless the link was signed by us for this job and has not expired."""
    _signer(svc).check(job_id, expires=expires, sig=sig)


def open_export(svc: Services, session: Session, job_id: str) -> tuple[SealedFile, Job]:
    """The finished export's zip, decrypted as it is read."""
    from core.filecrypt import SealedFile

    job = session.get(Job, job_id)
    if job is None or job.kind != EXPORT or job.state != "done":
        raise NotFound(f"export {job_id} does not exist, is not ready or has expired")
    store = storage(svc)
    key = export_object(job_id)
    try:
        dek = svc.keyring.data_key(job.result["key_id"])
        size = store.size(key)
    except (MissingKeyError, LookupError) as exc:
        raise NotFound(f"export {job_id} has expired") from exc
    return SealedFile(dek, export_context(job_id), size, lambda a, b: store.open(key, a, b)), job


def drop_export(svc: Services, session: Session, job: Job) -> str | None:
    """Delete an export's zip and shred its key; the job stays, marked expired. Returns the
    key id, which the caller must `forget_keys` after the commit."""
    storage(svc).delete(export_object(job.id))
    key_id = job.result.get("key_id")
    if key_id:
        session.execute(delete(DataKey).where(DataKey.id == key_id))
    job.state = "expired"
    job.result = {k: v for k, v in job.result.items() if k not in ("key_id",)}
    return key_id


def expire_exports(svc: Services, now: datetime) -> int:
    """Delete exports past `PARLEY_EXPORT_KEEP_S` (run by the purge). Returns how many."""
    with svc.Session.begin() as s:
        jobs = [
            j
            for j in s.scalars(select(Job).where(Job.kind == EXPORT, Job.state == "done"))
            if j.result.get("expires_at")
            and datetime.fromisoformat(j.result["expires_at"].replace("Z", "+00:00")) <= now
        ]
        keys = [k for k in (drop_export(svc, s, j) for j in jobs) if k]
    forget_keys(svc, keys)
    return len(jobs)
