"""Search: messages over the blind index (docs/search.md)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from marshmallow import fields, validate

from core.services import services
from domain.errors import NotFound
from domain.search import query as search_query
from domain.search.text import MAX_QUERY_CHARS
from web.auth import current, require_auth
from web.http import doc, query_args
from web.schemas.common import ResponseSchema, StrictSchema
from web.schemas.messages import MessageSchema

bp = Blueprint("search", __name__, url_prefix="/v1")
bp.before_request(require_auth)


class MessageSearchQuery(StrictSchema):
    # The length limit is checked with the query's other rules (domain/search/text.parse), so
    # every bad query gets the same kind of answer; this bound only stops absurd input early.
    q = fields.String(required=True, validate=validate.Length(max=MAX_QUERY_CHARS * 4))
    conversation_id = fields.String(validate=validate.Length(1, 26))
    sender_id = fields.String(validate=validate.Length(1, 128))
    since = fields.AwareDateTime()
    until = fields.AwareDateTime()
    has_attachments = fields.Boolean()
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 100), load_default=20)


class SearchHitSchema(ResponseSchema):
    message = fields.Nested(MessageSchema)
    highlights = fields.List(
        fields.List(fields.Integer(), validate=validate.Length(2, 2)),
        metadata={"description": "[start, end) offsets of the matches in message.text"},
    )


class SearchPageSchema(ResponseSchema):
    items = fields.List(fields.Nested(SearchHitSchema))
    next_cursor = fields.String(allow_none=True)


@bp.get("/search/messages")
@doc(
    'Search my messages (words, prefix*, "phrases"), newest first',
    query=MessageSearchQuery,
    responses={200: SearchPageSchema},
    tag="search",
)
def search_messages() -> dict[str, Any]:
    """Search the messages the caller may read; an API key names one conversation."""
    svc = services()
    if not svc.settings.search_index:
        raise NotFound("message search is turned off on this server (PARLEY_SEARCH_INDEX=false)")
    q = query_args(MessageSearchQuery())
    with svc.ReadSession() as s:
        items, next_cursor = search_query.search(svc, s, current(), q)
    return {"items": items, "next_cursor": next_cursor}
