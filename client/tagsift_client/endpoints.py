"""Every API operation the client calls, with what it sends and reads: the client is hand-written, and this list is
what ``tests/client/test_openapi_sync.py`` checks against the server's ``/openapi.json`` (each operation exists,
each query parameter, header, JSON or form field sent is declared, each success status is documented, and each
response field read is in the answer's schema). The integration tests check the other half: every request the
client sends during them matches one of these entries."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    status: int = 200
    query: frozenset[str] = field(default_factory=frozenset)
    headers: frozenset[str] = field(default_factory=frozenset)
    json: frozenset[str] = field(default_factory=frozenset)  # JSON body fields sent
    form: frozenset[str] = field(default_factory=frozenset)  # multipart fields sent
    reads: frozenset[str] = field(default_factory=frozenset)  # fields read from the (JSON) answer


def _e(method: str, path: str, status: int = 200, **sets: tuple[str, ...]) -> Endpoint:
    return Endpoint(method, path, status, **{k: frozenset(v) for k, v in sets.items()})


PAGE = ("data", "next_cursor")
UPLOAD_FORM = ("manifest", "images", "classes", "manifest_format")
ENDPOINTS: tuple[Endpoint, ...] = (
    _e("GET", "/datasets", query=("cursor", "limit"), reads=PAGE),
    _e("GET", "/datasets/{dataset_id}"),
    _e("POST", "/datasets", 201, json=("name", "classes", "prompt_template"), reads=("id",)),
    _e(
        "POST",
        "/datasets",
        201,
        headers=("Idempotency-Key",),
        form=("name", "prompt_template", *UPLOAD_FORM),
        reads=("id", "added", "duplicates", "skipped"),
    ),
    _e("DELETE", "/datasets/{dataset_id}", 204),
    _e(
        "POST",
        "/datasets/{dataset_id}/items",
        201,
        headers=("Idempotency-Key",),
        form=UPLOAD_FORM,
        reads=("added", "duplicates", "skipped"),
    ),
    _e("GET", "/datasets/{dataset_id}/items", query=("cursor", "limit", "needs_review", "order"), reads=PAGE),
    _e("GET", "/datasets/{dataset_id}/labels", query=("format", "from_name", "to_name")),
    _e("GET", "/items/{item_id}"),
    _e("PATCH", "/items/{item_id}", json=("label", "add_to_candidates"), reads=("id",)),
    _e("POST", "/datasets/{dataset_id}/jobs", 202, headers=("Idempotency-Key",), reads=("id",)),
    _e("GET", "/jobs", query=("cursor", "limit", "dataset_id", "status"), reads=PAGE),
    _e("GET", "/jobs/{job_id}", reads=("status", "progress")),
    _e("GET", "/jobs/{job_id}/events", query=("after", "limit"), reads=("data", "next_after", "has_more")),
    _e("POST", "/jobs/{job_id}/cancel", 202),
    _e("GET", "/models", query=("cursor", "limit", "dataset_id"), reads=PAGE),
    _e("GET", "/models/{model_id}"),
    _e("GET", "/models/{model_id}/export", query=("merged",)),
    _e("POST", "/predict", form=("model_id", "image", "candidates", "top_k"), reads=("predictions",)),
    _e("POST", "/webhooks", 201, json=("url", "events", "description")),
    _e("GET", "/webhooks", query=("cursor", "limit"), reads=PAGE),
    _e("GET", "/webhooks/{webhook_id}"),
    _e("DELETE", "/webhooks/{webhook_id}", 204),
    _e("GET", "/webhooks/{webhook_id}/deliveries", query=("status", "cursor", "limit"), reads=PAGE),
)


def match(method: str, path: str) -> Endpoint | None:
    """The entry of a request (``/datasets/abc/items`` matches ``/datasets/{dataset_id}/items``)."""
    parts = path.rstrip("/").split("/")
    for e in ENDPOINTS:
        tpl = e.path.split("/")
        same_shape = e.method == method and len(tpl) == len(parts)
        if same_shape and all(t == p or (t.startswith("{") and p) for t, p in zip(tpl, parts, strict=True)):
            return e
    return None
