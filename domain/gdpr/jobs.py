"""The GDPR API's rules: who may export or erase whom, starting those jobs, and what a job's
status shows (with a fresh signed download link once an export is done).

Both run as jobs with progress (domain/jobs.py) because a user's history can be large.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.ids import iso, utcnow
from core.services import Services
from domain import audit, jobs
from domain.errors import Forbidden, NotFound
from domain.gdpr.erasure import ERASE, ERASE_JOB
from domain.gdpr.export import EXPORT_JOB, known_user
from domain.gdpr.stored_exports import EXPORT, download_url
from domain.principals import Principal
from domain.signed_urls import expiry
from models import Job

PRIVACY_ROLE = "admin"


def is_privacy_admin(who: Principal) -> bool:
    """Exports of anyone and erasure: the host platform's API key or the `admin` role."""
    return who.is_service or PRIVACY_ROLE in who.roles


def start_export(session: Session, who: Principal, user_id: str) -> Job:
    """Queue an export of `user_id`'s data: the user themselves, an admin or an API key.

    While one is queued or running, asking again returns it (an export is not cheap)."""
    if not is_privacy_admin(who) and who.user_id != user_id:
        raise Forbidden("you may export your own data; others' needs an API key or admin role")
    pending = _pending(session, EXPORT, user_id)
    if pending is not None:
        return pending
    known_user(session, user_id)
    job = jobs.start(session, EXPORT_JOB, {"user_id": user_id}, who.label)
    audit.record(session, who, "user.export", "user", user_id, detail={"job_id": job.id})
    return job


def start_erase(session: Session, who: Principal, user_id: str, reason: str | None) -> Job:
    """Queue the erasure of `user_id` (API key or admin); asking twice returns the same job."""
    if not is_privacy_admin(who):
        raise Forbidden("erasing a user needs an API key or the admin role")
    pending = _pending(session, ERASE, user_id)
    if pending is not None:
        return pending
    known_user(session, user_id)
    pseudonym = "erased-" + secrets.token_hex(8)
    params = {"user_id": user_id, "pseudonym": pseudonym}
    job = jobs.start(session, ERASE_JOB, params, who.label)
    audit.record(
        session,
        who,
        "user.erase_requested",
        "user",
        user_id,
        reason=reason,
        detail={"job_id": job.id},
    )
    return job


def _pending(session: Session, kind: str, user_id: str) -> Job | None:
    """A queued or running job of `kind` for `user_id` (such jobs are few at any time)."""
    for job in session.scalars(
        select(Job).where(Job.kind == kind, Job.state.in_(("queued", "running")))
    ):
        if job.params.get("user_id") == user_id:
            return job
    return None


def visible_job(session: Session, who: Principal, job_id: str) -> Job:
    """A job the caller may follow: admins and API keys see all; a user sees the jobs they
    started and exports of their own data."""
    job = session.get(Job, job_id)
    if job is not None and (
        is_privacy_admin(who)
        or job.created_by == who.label
        or (job.kind == EXPORT and job.params.get("user_id") == who.user_id)
    ):
        return job
    raise NotFound(f"job {job_id} does not exist")


def job_view(svc: Services, job: Job, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    out: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "error": job.error,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
    }
    subject = job.params.get("user_id") or job.params.get("pseudonym")
    if subject is not None:
        out["user_id"] = subject
    if job.params.get("conversation_id"):
        out["conversation_id"] = job.params["conversation_id"]
    if job.kind == EXPORT and job.state == "done":
        out["expires_at"] = job.result.get("expires_at")
        out["size"] = job.result.get("size")
        expires = expiry(svc.settings.download_ttl_s, now)
        out["download_url"] = download_url(svc, job.id, expires)
        out["download_expires_at"] = iso(datetime.fromtimestamp(expires, now.tzinfo))
    if job.kind == ERASE and job.state == "done":
        out["result"] = dict(job.result)
    return out
