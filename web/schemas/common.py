"""What every resource's schemas share: strict request input, problems, paging, health."""

from __future__ import annotations

import json
from typing import Any

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, validate

MAX_METADATA_BYTES = 8 * 1024


def small_json(value: dict[str, Any]) -> None:
    """Validator of `metadata` objects: at most MAX_METADATA_BYTES of JSON."""
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ValidationError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")


class StrictSchema(Schema):
    """Request input: unknown fields are errors. (Text no database can store, such as NUL, is
    refused before any schema runs: web/http.py.)"""

    class Meta:
        unknown = RAISE


class PageQuery(StrictSchema):
    cursor = fields.String(validate=validate.Length(max=500))
    limit = fields.Integer(validate=validate.Range(1, 200), load_default=50)


class ProblemSchema(Schema):
    class Meta:
        unknown = INCLUDE  # RFC 9457 extension members, e.g. `moderation` on a refused edit

    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    request_id = fields.String()


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())
