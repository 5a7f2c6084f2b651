"""The hand-written client against the server's OpenAPI document: every operation in ``tagsift_client.endpoints``
exists with what the client sends and reads (the integration tests check that the client sends nothing else)."""

from __future__ import annotations

import pytest
from tagsift_client.endpoints import ENDPOINTS, Endpoint, match

from app.main import create_app


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app().openapi()


def _resolve(schema: dict, node: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return node


def _properties(schema: dict, node: dict) -> set[str]:
    """Every property a schema may have (through $ref, allOf/anyOf/oneOf)."""
    node = _resolve(schema, node or {})
    props = set(node.get("properties", {}))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, []):
            props |= _properties(schema, sub)
    return props


def _id(e: Endpoint) -> str:
    kind = "form" if e.form else "json" if e.json else ""
    return f"{e.method} {e.path} {kind}".strip()


def mismatches(schema: dict, endpoint: Endpoint) -> list[str]:
    """What of ``endpoint`` the OpenAPI document does not declare (empty: in step)."""
    op = schema["paths"].get(endpoint.path, {}).get(endpoint.method.lower())
    if op is None:
        return [f"{endpoint.method} {endpoint.path} is not in /openapi.json"]
    found = []
    params = {(p["in"], p["name"]) for p in op.get("parameters", [])}
    found += [f"query {q}" for q in sorted(endpoint.query) if ("query", q) not in params]
    found += [f"header {h}" for h in sorted(endpoint.headers) if ("header", h) not in params]
    if str(endpoint.status) not in op["responses"]:
        found.append(f"status {endpoint.status}")
    content = (op.get("requestBody") or {}).get("content", {})
    for kind, fields in (("application/json", endpoint.json), ("multipart/form-data", endpoint.form)):
        if fields:
            declared = _properties(schema, content.get(kind, {}).get("schema", {}))
            found += [f"{kind} field {f}" for f in sorted(fields - declared)]
    if endpoint.reads:
        answer = op["responses"].get(str(endpoint.status), {}).get("content", {}).get("application/json", {})
        declared = _properties(schema, answer.get("schema", {}))
        found += [f"answer field {f}" for f in sorted(endpoint.reads - declared)]
    return found


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_each_call_of_the_client_is_in_the_openapi_document(schema: dict, endpoint: Endpoint) -> None:
    assert mismatches(schema, endpoint) == []


def test_a_call_out_of_step_is_caught(schema: dict) -> None:
    """The check finds each kind of drift: an operation, a parameter, a header, a field, a status, an answer field."""
    assert mismatches(schema, Endpoint("GET", "/datasets/{dataset_id}/pictures")) != []
    wrong = [
        Endpoint("GET", "/jobs", query=frozenset({"state"})),
        Endpoint("POST", "/datasets", 201, headers=frozenset({"Idempotency-Token"})),
        Endpoint("POST", "/datasets/{dataset_id}/items", 201, form=frozenset({"photos"})),
        Endpoint("PATCH", "/items/{item_id}", json=frozenset({"tag"})),
        Endpoint("POST", "/jobs/{job_id}/cancel", 200),
        Endpoint("GET", "/jobs/{job_id}/events", reads=frozenset({"next_cursor"})),
    ]
    assert [len(mismatches(schema, e)) for e in wrong] == [1] * len(wrong)


def test_the_paths_match_their_templates_only() -> None:
    assert match("GET", "/datasets/abc/items").path == "/datasets/{dataset_id}/items"
    assert match("POST", "/jobs/j1/cancel").path == "/jobs/{job_id}/cancel"
    assert match("GET", "/datasets/abc/nothing") is None
    assert match("PUT", "/datasets") is None
