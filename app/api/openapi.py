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

#: The image formats an upload accepts (``app.imaging.ALLOWED_FORMATS``), as the media types of the file parts.
IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff"

# --- links: where the ids a response carries can be used next (OpenAPI "links"; clients and stateful testers
# such as schemathesis follow them). (path, method, status) -> {link name: (path, method, {parameter: value})}.
_DATASET = "$response.body#/id"
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("/datasets", "post", "201"): {
        "GetDataset": ("/datasets/{dataset_id}", "get", {"path.dataset_id": _DATASET}),
        "ListItems": ("/datasets/{dataset_id}/items", "get", {"path.dataset_id": _DATASET}),
        "AddItems": ("/datasets/{dataset_id}/items", "post", {"path.dataset_id": _DATASET}),
        "ExportLabels": ("/datasets/{dataset_id}/labels", "get", {"path.dataset_id": _DATASET}),
        "StartJob": ("/datasets/{dataset_id}/jobs", "post", {"path.dataset_id": _DATASET}),
        "ListJobs": ("/jobs", "get", {"query.dataset_id": _DATASET}),
        "ListModels": ("/models", "get", {"query.dataset_id": _DATASET}),
        "DeleteDataset": ("/datasets/{dataset_id}", "delete", {"path.dataset_id": _DATASET}),
    },
    ("/datasets", "get", "200"): {
        "GetDataset": ("/datasets/{dataset_id}", "get", {"path.dataset_id": "$response.body#/data/0/id"}),
        "ListItems": ("/datasets/{dataset_id}/items", "get", {"path.dataset_id": "$response.body#/data/0/id"}),
    },
    ("/datasets/{dataset_id}/items", "post", "201"): {
        "GetItem": ("/items/{item_id}", "get", {"path.item_id": "$response.body#/item_ids/0"}),
        "ListItems": ("/datasets/{dataset_id}/items", "get", {"path.dataset_id": "$response.body#/dataset_id"}),
    },
    ("/datasets/{dataset_id}/items", "get", "200"): {
        "GetItem": ("/items/{item_id}", "get", {"path.item_id": "$response.body#/data/0/id"}),
        "ReviewItem": ("/items/{item_id}", "patch", {"path.item_id": "$response.body#/data/0/id"}),
        "GetItemImage": ("/items/{item_id}/image", "get", {"path.item_id": "$response.body#/data/0/id"}),
    },
    ("/items/{item_id}", "get", "200"): {
        "ReviewItem": ("/items/{item_id}", "patch", {"path.item_id": "$response.body#/id"}),
        "GetItemImage": ("/items/{item_id}/image", "get", {"path.item_id": "$response.body#/id"}),
        "ListItems": ("/datasets/{dataset_id}/items", "get", {"path.dataset_id": "$response.body#/dataset_id"}),
    },
    ("/items/{item_id}", "patch", "200"): {
        "GetItem": ("/items/{item_id}", "get", {"path.item_id": "$response.body#/id"}),
    },
    ("/datasets/{dataset_id}/jobs", "post", "202"): {
        "GetJob": ("/jobs/{job_id}", "get", {"path.job_id": _DATASET}),
        "ListJobEvents": ("/jobs/{job_id}/events", "get", {"path.job_id": _DATASET}),
        "CancelJob": ("/jobs/{job_id}/cancel", "post", {"path.job_id": _DATASET}),
    },
    ("/jobs", "get", "200"): {
        "GetJob": ("/jobs/{job_id}", "get", {"path.job_id": "$response.body#/data/0/id"}),
        "ListJobEvents": ("/jobs/{job_id}/events", "get", {"path.job_id": "$response.body#/data/0/id"}),
    },
    ("/jobs/{job_id}", "get", "200"): {
        "GetModel": ("/models/{model_id}", "get", {"path.model_id": "$response.body#/model_id"}),
        "ListJobEvents": ("/jobs/{job_id}/events", "get", {"path.job_id": "$response.body#/id"}),
    },
    ("/models", "get", "200"): {
        "GetModel": ("/models/{model_id}", "get", {"path.model_id": "$response.body#/data/0/id"}),
        "ExportModel": ("/models/{model_id}/export", "get", {"path.model_id": "$response.body#/data/0/id"}),
        "PredictItem": ("/predict", "get", {"query.model_id": "$response.body#/data/0/id"}),
    },
    ("/models/{model_id}", "get", "200"): {
        "ExportModel": ("/models/{model_id}/export", "get", {"path.model_id": "$response.body#/id"}),
        "GetJob": ("/jobs/{job_id}", "get", {"path.job_id": "$response.body#/job_id"}),
        "PredictItem": ("/predict", "get", {"query.model_id": "$response.body#/id"}),
    },
    ("/webhooks", "post", "201"): {
        "GetWebhook": ("/webhooks/{webhook_id}", "get", {"path.webhook_id": "$response.body#/id"}),
        "ListWebhookDeliveries": (
            "/webhooks/{webhook_id}/deliveries",
            "get",
            {"path.webhook_id": "$response.body#/id"},
        ),
        "DeleteWebhook": ("/webhooks/{webhook_id}", "delete", {"path.webhook_id": "$response.body#/id"}),
    },
    ("/webhooks", "get", "200"): {
        "GetWebhook": ("/webhooks/{webhook_id}", "get", {"path.webhook_id": "$response.body#/data/0/id"}),
        "ListWebhookDeliveries": (
            "/webhooks/{webhook_id}/deliveries",
            "get",
            {"path.webhook_id": "$response.body#/data/0/id"},
        ),
    },
}


def add_links(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (FastAPI's OpenAPI document) with :data:`LINKS` in its responses, by the targets' operationIds."""
    paths = schema["paths"]
    for (path, method, status), links in LINKS.items():
        response = paths[path][method]["responses"][status]
        response["links"] = {
            name: {"operationId": paths[target][target_method]["operationId"], "parameters": parameters}
            for name, (target, target_method, parameters) in links.items()
        }
    return schema
