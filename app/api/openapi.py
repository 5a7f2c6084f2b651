"""OpenAPI declarations of the error responses: every route documents the statuses it can answer.

Errors are ``application/problem+json`` with the :class:`app.schemas.Problem` body (see ``app.api.errors``).
:data:`COMMON` is what any authenticated route can answer (a missing key, an over-limit body, bad parameters, the
database down); :func:`problems` adds a route's own statuses with their descriptions.
"""

from __future__ import annotations

from typing import Any

from app.schemas import Problem

PROBLEM_JSON = "application/problem+json"


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema with its ``#/$defs/...`` references replaced by the definitions (OpenAPI-safe, no $defs)."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


PROBLEM_SCHEMA = _inline_refs(Problem.model_json_schema())


def problem(description: str) -> dict[str, Any]:
    """One documented error response: ``description`` with a problem+json body."""
    return {"description": description, "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}


def problems(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for FastAPI: each status with its description and the problem+json body."""
    return {code: problem(description) for code, description in codes.items()}


#: What every authenticated route can answer.
COMMON = problems(
    {
        401: "missing or invalid API key",
        413: "request body over TAGSIFT_MAX_REQUEST_BYTES",
        422: "invalid input: every problem listed in `errors`",
        503: "the database is unavailable (retry later; see Retry-After)",
    }
)

#: What a route with a request body can answer besides :data:`COMMON`.
BODY = problems({400: "the body cannot be parsed (malformed JSON or multipart)"})

#: What a route that takes a multipart upload can answer besides :data:`COMMON` and :data:`BODY`.
UPLOAD = problems({415: "Content-Type is not multipart/form-data"})
