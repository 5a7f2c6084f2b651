"""The errors the services and the upload parser raise: one shape for every failure, and no web framework.

Services raise :class:`ApiError` (or a subclass) with its HTTP status as a plain int, a stable ``code`` and, for
input problems, a list of :class:`FieldError` naming the field and the item. Nothing here knows FastAPI or
Starlette, so the worker (which calls the services) loads neither: ``app/api/errors.py`` holds the handlers that
render these errors as ``application/problem+json`` (RFC 9457), and ``app/web`` branches on their classes and codes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class FieldError:
    """One problem with the input: which field, which item (file name, row, index) and what is wrong."""

    field: str
    message: str
    item: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class FieldErrors(list[FieldError]):
    """The one collector of field errors: every check adds to it, and the request fails once with all of them."""

    def add(self, field: str, message: str, *, item: str | None = None, line: int | None = None) -> None:
        self.append(FieldError(field=field, message=message, item=item, line=line))


class ApiError(Exception):
    """An error with its own HTTP status (an int) and a stable machine-readable ``code``."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.errors = errors or []
        self.headers = headers
        self.extra = extra or {}


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class InvalidInput(ApiError):
    """422: the request is well-formed but its content is wrong; ``errors`` lists every bad field/item."""

    status, code = 422, "invalid_input"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"
