"""Retention policies, conversation deletion, and GDPR export and erasure jobs."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, current_app, request

from core.services import services
from domain import conversations as convs
from domain.gdpr import jobs as gdpr
from domain.gdpr.stored_exports import check_signature, open_export
from domain.retention import policy
from domain.retention.key_forgetter import KeyForgetter
from domain.retention.shredding import forget_keys
from web.auth import current, require_auth
from web.http import doc, json_body, query_args
from web.schemas.privacy import (
    EraseSchema,
    ExportDownloadQuery,
    JobSchema,
    RetentionDefaultsSchema,
    RetentionPatchSchema,
    RetentionSchema,
)

bp = Blueprint("privacy", __name__, url_prefix="/v1")
PUBLIC = frozenset({"privacy.download_export"})  # the signature is the credential


@bp.before_request
def _authenticate() -> None:
    if request.endpoint not in PUBLIC:
        require_auth()


@bp.before_app_request
def _follow_shredded_keys() -> None:
    """Start this process's key-shred listener with its first request (after any fork)."""
    app = current_app
    if app.extensions.get("parley_key_forgetter") == os.getpid():
        return
    app.extensions["parley_key_forgetter"] = os.getpid()
    svc = services()
    if not svc.settings.testing:  # tests start their own and stop it
        KeyForgetter(svc).start()


# --- retention --------------------------------------------------------------------------------


@bp.get("/privacy/retention")
@doc("The server's default retention", responses={200: RetentionDefaultsSchema}, tag="privacy")
def retention_defaults() -> dict[str, Any]:
    """Show the default retention, the grace period and how often the purge runs."""
    settings = services().settings
    seconds = policy.global_seconds(settings)
    return {
        "retention_days": settings.retention_days or None,
        "retention_seconds": seconds,
        "grace_seconds": round(settings.retention_grace_s),
        "interval_seconds": round(settings.retention_interval_s),
    }


@bp.get("/conversations/<cid>/retention")
@doc("A conversation's retention", responses={200: RetentionSchema}, tag="privacy")
def get_retention(cid: str) -> dict[str, Any]:
    """Show how long a conversation keeps its messages."""
    svc = services()
    with svc.ReadSession() as s:
        conv = policy.get_policy(s, current(), cid)
        return policy.policy_view(svc.settings, conv)


@bp.patch("/conversations/<cid>/retention")
@doc(
    "Set or clear a conversation's retention",
    body=RetentionPatchSchema,
    responses={200: RetentionSchema},
    tag="privacy",
)
def set_retention(cid: str) -> dict[str, Any]:
    """Override the default retention (owners, admins, moderators, API keys); null inherits."""
    body = json_body(RetentionPatchSchema())
    if "retention_days" in body:
        days = body["retention_days"]
        seconds = None if days is None else round(days * 86400)
    else:
        seconds = body["retention_seconds"]
    svc = services()
    with svc.Session.begin() as s:
        conv = policy.set_policy(svc.settings, s, current(), cid, seconds)
        return policy.policy_view(svc.settings, conv)


@bp.delete("/conversations/<cid>")
@doc(
    "Delete a conversation for everyone (202: keys shredded, rows purged by a job)",
    responses={202: JobSchema},
    tag="privacy",
)
def delete_conversation(cid: str) -> tuple[dict[str, Any], int]:
    """Shred the conversation's keys now and purge its rows in the background (owners, API key)."""
    svc = services()
    with svc.Session.begin() as s:
        job, shredded = convs.delete_conversation(s, current(), cid)
        out = gdpr.job_view(svc, job)
    forget_keys(svc, shredded)
    return out, 202


# --- GDPR -------------------------------------------------------------------------------------


@bp.post("/privacy/users/<uid>/export")
@doc("Export a user's data (202: a job)", responses={202: JobSchema}, tag="privacy")
def export_user(uid: str) -> tuple[dict[str, Any], int]:
    """Queue a zip of everything held about a user (the user, an admin or an API key)."""
    svc = services()
    with svc.Session.begin() as s:
        job = gdpr.start_export(s, current(), uid)
        return gdpr.job_view(svc, job), 202


@bp.post("/privacy/users/<uid>/erase")
@doc("Erase a user (202: a job)", body=EraseSchema, responses={202: JobSchema}, tag="privacy")
def erase_user(uid: str) -> tuple[dict[str, Any], int]:
    """Queue the erasure of a user (an admin or an API key); the body is optional."""
    body = json_body(EraseSchema()) if request.content_length else {}
    svc = services()
    with svc.Session.begin() as s:
        job = gdpr.start_erase(s, current(), uid, body.get("reason"))
        return gdpr.job_view(svc, job), 202


@bp.get("/privacy/jobs/<job_id>")
@doc(
    "A job's progress; a finished export has its download URL",
    responses={200: JobSchema},
    tag="privacy",
)
def get_job(job_id: str) -> dict[str, Any]:
    """Show a job's state and progress (done of total), with a fresh signed URL when ready."""
    svc = services()
    with svc.ReadSession() as s:
        return gdpr.job_view(svc, gdpr.visible_job(s, current(), job_id))


@bp.get("/privacy/jobs/<job_id>/download")
@doc(
    "Download an export zip (signed URL from the job)",
    query=ExportDownloadQuery,
    auth=False,
    tag="privacy",
)
def download_export(job_id: str) -> Response:
    """Stream the export zip, decrypting it on the way out."""
    q = query_args(ExportDownloadQuery())
    svc = services()
    check_signature(svc, job_id, q["exp"], q["sig"])
    with svc.ReadSession() as s:
        sealed, _ = open_export(svc, s, job_id)
    return Response(
        sealed.iter_range(),
        mimetype="application/zip",
        headers={
            "Content-Length": str(sealed.size),
            "Content-Disposition": f'attachment; filename="parley-export-{job_id}.zip"',
        },
    )
