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


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_each_call_of_the_client_is_in_the_openapi_document(schema: dict, endpoint: Endpoint) -> None:
    op = schema["paths"].get(endpoint.path, {}).get(endpoint.method.lower())
    assert op is not None, f"{endpoint.method} {endpoint.path} is not in /openapi.json"
    params = {(p["in"], p["name"]) for p in op.get("parameters", [])}
    assert {("query", q) for q in endpoint.query} <= params, params
    assert {("header", h) for h in endpoint.headers} <= params, params
    assert str(endpoint.status) in op["responses"], sorted(op["responses"])
    content = (op.get("requestBody") or {}).get("content", {})
    if endpoint.json:
        assert endpoint.json <= _properties(schema, content["application/json"]["schema"])
    if endpoint.form:
        assert endpoint.form <= _properties(schema, content["multipart/form-data"]["schema"])
    if endpoint.reads:
        answer = op["responses"][str(endpoint.status)]["content"]["application/json"]["schema"]
        assert endpoint.reads <= _properties(schema, answer)


def test_the_paths_match_their_templates_only() -> None:
    assert match("GET", "/datasets/abc/items").path == "/datasets/{dataset_id}/items"
    assert match("POST", "/jobs/j1/cancel").path == "/jobs/{job_id}/cancel"
    assert match("GET", "/datasets/abc/nothing") is None
    assert match("PUT", "/datasets") is None
