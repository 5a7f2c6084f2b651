"""Errors as ``application/problem+json`` (RFC 9457), one shape for every failure: the HTTP side only.

Services raise :class:`app.errors.ApiError` (or a subclass) with the HTTP status, a stable ``code`` and, for input
problems, a list of :class:`app.errors.FieldError` naming the field and the item; the handlers below render them,
and also turn FastAPI's own validation errors, Starlette's HTTP errors, and database outages (``OperationalError``)
into the same shape, so a client never sees an HTML page or a bare 500 for bad input or a DB outage.

Body::

    {"type": "urn:tagsift:problem:<code>", "title": "...", "status": 422, "detail": "...",
     "code": "<code>", "instance": "/datasets/1/items",
     "errors": [{"field": "manifest", "item": "a.jpg", "line": 3, "message": "..."}]}
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import ApiError, FieldError
from app.storage import StorageError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(
    request: Request | None,
    *,
    status: int,
    code: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:tagsift:problem:{code}",
        "title": _title(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
    if errors:
        body["errors"] = [e.to_dict() for e in errors]
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _validation_field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_error_field(err: dict) -> FieldError:
    """One of FastAPI's validation errors as a :class:`FieldError` (a body that is not JSON is field ``body``)."""
    if err.get("type") == "json_invalid":  # FastAPI's loc is ("body", <offset>): not a field "0"
        reason = (err.get("ctx") or {}).get("error", "JSON decode error")
        return FieldError(field="body", message=f"body: not valid JSON ({reason})")
    if tuple(err.get("loc", ())) == ("body",) and isinstance(err.get("input"), bytes):  # not read as JSON
        return FieldError(
            field="body", message="body: not a JSON object (send JSON with Content-Type: application/json)"
        )
    field = _validation_field(err.get("loc", ()))
    return FieldError(field=field, message=f"{field}: {err.get('msg', 'invalid')}")


#: The ``detail`` of FastAPI's own 400 for a request body it could not decode (``fastapi.routing``).
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: every method the OpenAPI document gives the request's path (Starlette's own
    answer names only the methods of the first route that matched the path, e.g. GET without the POST beside it)."""
    app = request.app
    table = getattr(app.state, "allow_table", None)
    if table is None:
        table = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"), methods)
            for path, methods in (
                (path, {m.upper() for m in ops if m in _HTTP_METHODS}) for path, ops in app.openapi()["paths"].items()
            )
        ]
        app.state.allow_table = table
    path = request.url.path
    return ", ".join(sorted(set().union(*(methods for regex, methods in table if regex.match(path)))))


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem_response(
            request,
            status=exc.status,
            code=exc.code,
            detail=exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_validation_error_field(err) for err in exc.errors()]
        detail = "; ".join(e.message for e in errors) or "the request is invalid"
        return problem_response(request, status=422, code="invalid_input", detail=detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR and isinstance(exc.__cause__, ApiError):
            return await _api_error(request, exc.__cause__)  # e.g. the body timeout, raised while FastAPI read it
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            # FastAPI's answer when a JSON body cannot even be decoded (e.g. not UTF-8): name the field
            message = "body: cannot be read as JSON; send UTF-8 encoded JSON"
            return problem_response(
                request,
                status=400,
                code="malformed_body",
                detail=message,
                errors=[FieldError(field="body", message=message)],
            )
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return problem_response(request, status=exc.status_code, code=code, detail=detail, headers=headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable during %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            request,
            status=503,
            code="database_unavailable",
            detail="the database is unavailable; retry later",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(StorageError)
    async def _storage_down(request: Request, exc: StorageError) -> JSONResponse:
        # the store failed before the request's rows were committed: nothing of it is stored (blobs already
        # written are content-addressed and reused by the retry)
        log.warning("object store unavailable during %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            request,
            status=503,
            code="storage_unavailable",
            detail="the object store is unavailable; nothing was stored, retry later",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - safety net
        log.exception("unhandled error during %s %s", request.method, request.url.path)
        return problem_response(request, status=500, code="internal_error", detail="internal error")
