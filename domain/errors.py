"""Rule violations, mapped to RFC 9457 problem responses by web/errors.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DomainError(Exception):
    status = 400
    title = "Bad Request"

    def __init__(
        self, detail: str, errors: Mapping[str, Sequence[str]] | None = None, **extra: object
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = dict(errors) if errors else None
        self.extra = extra


class Unauthorized(DomainError):
    status = 401
    title = "Unauthorized"


class Forbidden(DomainError):
    status = 403
    title = "Forbidden"


class NotFound(DomainError):
    status = 404
    title = "Not Found"


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class TooLarge(DomainError):
    status = 413
    title = "Content Too Large"


class UnsupportedType(DomainError):
    status = 415
    title = "Unsupported Media Type"


class Invalid(DomainError):
    status = 422
    title = "Unprocessable Content"
