"""Push subscriptions (docs/api.md, stable), preview preferences, the VAPID key and dead letters."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from core.services import services
from domain import push
from push.vapid import VapidKey
from web.auth import current, require_auth
from web.http import doc, json_body, query_args
from web.schemas.common import PageQuery
from web.schemas.push import (
    DeadLetterPageSchema,
    EmailCodeSchema,
    PushPreferencesPatchSchema,
    PushPreferencesSchema,
    PushSubscriptionCreateSchema,
    PushSubscriptionListSchema,
    PushSubscriptionSchema,
    VapidKeySchema,
)

bp = Blueprint("push", __name__, url_prefix="/v1/push")


@bp.before_request
def _auth() -> None:
    from flask import request

    if request.endpoint != "push.vapid_public_key":
        require_auth()


def vapid_key() -> VapidKey:
    """Loaded once per process (generated into the data dir on first use when not configured)."""
    key: VapidKey | None = current_app.extensions.get("parley_vapid")
    if key is None:
        s = services().settings
        key = VapidKey.load(s.vapid_private_key, s.vapid_subject, s.data_dir)
        current_app.extensions["parley_vapid"] = key
    return key


@bp.get("/vapid-public-key")
@doc(
    "The VAPID public key browsers subscribe with",
    responses={200: VapidKeySchema},
    auth=False,
    tag="push",
)
def vapid_public_key() -> dict[str, str]:
    """Give the applicationServerKey for PushManager.subscribe()."""
    return {"public_key": vapid_key().public_key}


@bp.post("/subscriptions")
@doc(
    "Subscribe to offline pushes (Web Push, webhook or e-mail digest)",
    body=PushSubscriptionCreateSchema,
    responses={201: PushSubscriptionSchema, 200: PushSubscriptionSchema},
    tag="push",
)
def create_subscription() -> tuple[dict[str, Any], int]:
    """Register a push target; a webhook's signing secret is in this response only."""
    body = json_body(PushSubscriptionCreateSchema())
    svc = services()
    user = current().require_user()
    with svc.Session.begin() as s:
        sub, created, secret = push.subscribe(svc, s, user, body)
        return push.render_subscription(sub, secret), 201 if created else 200


@bp.post("/subscriptions/<sid>/verify")
@doc(
    "Confirm an e-mail subscription with the code mailed to it",
    body=EmailCodeSchema,
    responses={200: PushSubscriptionSchema},
    tag="push",
)
def verify_subscription(sid: str) -> dict[str, Any]:
    """Digests go to an address only once its owner has entered the mailed code."""
    body = json_body(EmailCodeSchema())
    svc = services()
    user = current().require_user()
    with svc.Session.begin() as s:
        return push.render_subscription(push.verify_email(svc, s, user, sid, body["code"]))


@bp.get("/subscriptions")
@doc("List my push subscriptions", responses={200: PushSubscriptionListSchema}, tag="push")
def list_subscriptions() -> dict[str, Any]:
    """List the caller's push targets (secrets are never shown again)."""
    user = current().require_user()
    with services().ReadSession() as s:
        return {"items": [push.render_subscription(x) for x in push.list_for(s, user)]}


@bp.delete("/subscriptions/<sid>")
@doc("Remove a push subscription", responses={204: None}, tag="push")
def delete_subscription(sid: str) -> Response:
    """Stop pushing to this target and shred its secret."""
    user = current().require_user()
    svc = services()
    with svc.Session.begin() as s:
        push.unsubscribe(svc, s, user, sid)
    return Response(status=204)


@bp.get("/preferences")
@doc("My push preview setting", responses={200: PushPreferencesSchema}, tag="push")
def get_preferences() -> dict[str, Any]:
    """Show how much a push may reveal: my choice, the server's ceiling, the result."""
    user = current().require_user()
    svc = services()
    with svc.ReadSession() as s:
        return push.preferences(s, svc.settings, user)


@bp.patch("/preferences")
@doc(
    "Choose how much a push reveals (full, sender, id; null = the server's setting)",
    body=PushPreferencesPatchSchema,
    responses={200: PushPreferencesSchema},
    tag="push",
)
def patch_preferences() -> dict[str, Any]:
    """Set the caller's preview mode; never more revealing than PARLEY_PUSH_PREVIEW."""
    body = json_body(PushPreferencesPatchSchema())
    user = current().require_user()
    svc = services()
    with svc.Session.begin() as s:
        push.set_preview(s, user, body["preview"])
        return push.preferences(s, svc.settings, user)


@bp.get("/dead-letters")
@doc(
    "Deliveries that failed for good, newest first (API key)",
    query=PageQuery,
    responses={200: DeadLetterPageSchema},
    tag="ops",
)
def dead_letters() -> dict[str, Any]:
    """List dead letters for operators: which target, how many attempts, why."""
    q = query_args(PageQuery())
    with services().ReadSession() as s:
        items, next_cursor = push.dead_letters(
            s, current(), cursor=q.get("cursor"), limit=q["limit"]
        )
    return {"items": items, "next_cursor": next_cursor}
