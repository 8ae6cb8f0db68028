"""What every resource's schemas share: strict request input, response shapes, timestamps,
problems, paging, health."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from marshmallow import INCLUDE, RAISE, Schema, ValidationError, fields, pre_dump, validate

from core.ids import iso

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


class UndocumentedField(TypeError):
    """A response holds a field its schema does not declare: a bug, not bad input."""


class ResponseSchema(Schema):
    """A response shape. Every JSON answer is dumped through the schema its view documents
    (`@doc` in web/http.py), so /openapi.json and the real body are the same thing.

    Dumping a mapping with a key the schema does not declare fails instead of dropping the key
    silently: a field a renderer adds must be documented before any client can see it, and it
    can never vanish from an answer unnoticed because its schema forgot it."""

    @pre_dump
    def _only_documented(self, data: Any, **_: Any) -> Any:
        if isinstance(data, Mapping):
            extra = data.keys() - self.declared_fields.keys()
            if extra:
                raise UndocumentedField(
                    f"{type(self).__name__} does not declare {', '.join(sorted(extra))}"
                )
        return data


class Timestamp(fields.DateTime):
    """An instant, written as the API writes every one: RFC 3339, UTC as "Z" (core.ids.iso).
    Renderers shared with the live socket (domain/render.py) hand over text already in that
    form; it must parse as an aware instant and is passed on unchanged."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            if datetime.fromisoformat(value).tzinfo is None:
                raise ValueError(f"{attr}: {value!r} is not an instant (no UTC offset)")
            return value
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"{attr}: {value!r} is not an aware datetime")
        return iso(value)


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


class HealthSchema(ResponseSchema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())
