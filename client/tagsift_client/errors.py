"""The one exception type of the client: every failure, from the server's problem+json to a refused connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldProblem:
    """One entry of a problem's ``errors``: which field, which item (file, task, index), which manifest line."""

    field: str
    message: str
    item: str | None = None
    line: int | None = None


class TagsiftError(Exception):
    """A request that did not succeed.

    ``status`` is the HTTP status (``None`` when no answer came: ``code`` is then ``connection_error`` or
    ``timeout``), ``code`` the server's stable code (``invalid_input``, ``not_found``, ``conflict``,
    ``unauthorized``, ``payload_too_large``, ``service_unavailable``, ``idempotency_key_reused``, ...), ``detail``
    its sentence, ``errors`` every field problem it named, and ``problem`` the whole problem+json body.
    ``field`` and ``item`` are the first problem's (the usual case of one).
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str = "error",
        errors: list[FieldProblem] | None = None,
        problem: dict[str, Any] | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code
        self.errors = errors or []
        self.problem = problem or {}
        self.method = method
        self.url = url

    @property
    def field(self) -> str | None:
        return self.errors[0].field if self.errors else None

    @property
    def item(self) -> str | None:
        return self.errors[0].item if self.errors else None

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed (no answer, 502/503/504, or a 409 race)."""
        return self.status is None or self.status in (502, 503, 504) or self.code == "conflict"

    def __str__(self) -> str:
        where = f"{self.method} {self.url}: " if self.method else ""
        status = f"HTTP {self.status} " if self.status is not None else ""
        return f"{where}{status}{self.code}: {self.detail}"

    @classmethod
    def from_response(cls, response: Any) -> TagsiftError:
        """Read an error answer (problem+json, or anything else a proxy may send)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text[:500] if hasattr(response, "text") else ""
            body = {"status": response.status_code, "code": _code_of(response.status_code), "detail": text}
        errors = [
            FieldProblem(
                field=str(e.get("field", "")),
                message=str(e.get("message", "")),
                item=e.get("item"),
                line=e.get("line"),
            )
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        return cls(
            str(body.get("detail") or body.get("title") or response.reason_phrase),
            status=response.status_code,
            code=str(body.get("code") or _code_of(response.status_code)),
            errors=errors,
            problem=body,
            method=response.request.method,
            url=str(response.request.url),
        )


def _code_of(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "invalid_input",
        429: "too_many_requests",
        500: "internal_error",
        502: "bad_gateway",
        503: "service_unavailable",
        504: "gateway_timeout",
    }.get(status, f"http_{status}")
