"""Failure modes: a database outage answers 503 problem+json (never 500); docs are public; 405 is a problem."""

from __future__ import annotations

from tests.app.conftest import Api


def test_database_outage_answers_503_problem(alice: Api, tagsift_env) -> None:
    ds = alice.make_dataset(1)
    tagsift_env(database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")  # nothing listens there
    for method, url in [("GET", "/datasets"), ("GET", f"/datasets/{ds['id']}"), ("POST", f"/datasets/{ds['id']}/jobs")]:
        r = alice.client.request(method, url, headers=alice.headers, json={} if method == "POST" else None)
        assert r.status_code == 503, (url, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "database_unavailable" and r.headers["retry-after"]
    ready = alice.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    assert alice.client.get("/healthz").status_code == 200


def test_docs_are_public_and_list_every_route(alice: Api) -> None:
    client = alice.client
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    expected = {
        "/datasets",
        "/datasets/{dataset_id}",
        "/datasets/{dataset_id}/items",
        "/datasets/{dataset_id}/labels",
        "/datasets/{dataset_id}/jobs",
        "/items/{item_id}",
        "/items/{item_id}/image",
        "/jobs/{job_id}",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/cancel",
        "/models/{model_id}",
        "/models/{model_id}/export",
        "/predict",
        "/healthz",
        "/readyz",
    }
    assert expected <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    create = spec["paths"]["/datasets"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(create)


def test_method_not_allowed_is_a_problem(alice: Api) -> None:
    r = alice.client.put("/datasets", headers=alice.headers)
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/problem+json")
