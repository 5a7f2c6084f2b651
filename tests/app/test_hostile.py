"""Hostile input from issue 27, sent to the real app (ASGI, real PostgreSQL): no 5xx, the documented 4xx naming the
field, nothing stored on a refusal.

Each case was a 500 or a misleading answer before: a 4,301-digit integer or a 3,000-deep nesting in any JSON the
app parses (``json.loads`` raised ``ValueError``/``RecursionError``), ``{"lr": NaN}`` reported as "should be less
than or equal to 100", a non-JSON body reported at field ``"0"``, ``after`` past 2**63 on the web UI's job feed
(``OverflowError``), 66 images to ``/predict`` reported as "Maximum number of files is 65", webhooks to 6to4 and
site-local IPv6 addresses registered.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Base
from tests.app.conftest import Api, image_bytes
from tests.app.model_fixtures import BLUE, GREEN, RED, store_model

DEEP = "[" * 3000 + "]" * 3000
BIG = "9" * 4301


def counts() -> dict[str, int]:
    """Rows of every table: a refused request must leave them all unchanged."""
    with session_scope() as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def refused(r, status: int = 422, *, field: str | None = None, needle: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    if field is not None:
        assert any(e["field"] == field for e in body.get("errors", [])), body
    if needle is not None:
        assert needle in body["detail"], body
    return body


@pytest.fixture
def rgb(alice: Api, onnx_bytes: bytes) -> dict:
    """A dataset of three images with a job (the model's owner) and a stored model."""
    rows = [{"file": n, "candidates": ["cat", "lynx", "dog"]} for n in ("red.png", "green.png", "blue.png")]
    r = alice.upload("/datasets", rows, {"red.png": RED, "green.png": GREEN, "blue.png": BLUE}, name="rgb")
    assert r.status_code == 201, r.text
    ds = r.json()
    job = alice.post(f"/datasets/{ds['id']}/jobs", json={})
    assert job.status_code == 202, job.text
    return {"dataset": ds, "job": job.json(), "model_id": store_model(ds["id"], onnx_bytes)}


@pytest.mark.parametrize(
    ("value", "needle"),
    [(DEEP, "nested more than 64 levels"), (f'["cat", {BIG}]', "4301 digits"), ("[NaN]", "NaN")],
    ids=["deep", "big-int", "nan"],
)
def test_predict_candidates(alice: Api, rgb: dict, value: str, needle: str) -> None:
    before = counts()
    r = alice.post(
        "/predict",
        data={"model_id": rgb["model_id"], "candidates": value},
        files=[("image", ("red.png", RED, "image/png"))],
    )
    body = refused(r, field="candidates", needle=needle)
    assert body["detail"].startswith("candidates"), body
    assert counts() == before


def test_predict_says_the_image_limit(alice: Api, rgb: dict) -> None:
    files = [("image", (f"{i}.png", image_bytes(i), "image/png")) for i in range(66)]
    body = refused(alice.post("/predict", data={"model_id": rgb["model_id"]}, files=files), field="image")
    assert "64" in body["detail"] and "65" not in body["detail"], body


@pytest.mark.parametrize("route", ["predict", "setup", "webhook"])
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (DEEP, "nested more than 64 levels"),
        ('{"action": ' + "[" * 3000 + "]" * 3000 + "}", "nested more than 64 levels"),
        ('{"tasks": [{"id": ' + BIG + "}]}", "4301 digits"),
        ('{"project": 1e999}', "out of range"),
        ("{not json", "not valid JSON"),
    ],
    ids=["deep", "deep-action", "big-int", "inf", "not-json"],
)
@pytest.mark.parametrize("ctype", ["application/json", None], ids=["json", "no-content-type"])
def test_label_studio_bodies(alice: Api, rgb: dict, route: str, text: str, needle: str, ctype: str | None) -> None:
    before = counts()
    headers = {"Content-Type": ctype} if ctype else {}
    r = alice.post(f"/label-studio/{rgb['dataset']['id']}/{route}", content=text.encode(), headers=headers)
    refused(r, needle=needle)
    assert counts() == before


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ('{"lr": NaN}', "lr", "NaN is not a JSON number"),
        ('{"lr": Infinity}', "lr", "Infinity is not a JSON number"),
        ('{"epochs": ' + "7" * 5000 + "}", "epochs", "5000 digits"),
        ("method=coop", "body", "not valid JSON"),
        ('{"method": "coop"', "body", "not valid JSON"),
        ('{"ctx_init": "\\ud800"}', "ctx_init", "unpaired"),
        ('{"x": ' + "{" * 3000 + "}" * 3000 + "}", "body", "nested"),
    ],
    ids=["nan", "inf", "big-int", "form", "truncated", "surrogate", "deep"],
)
def test_job_bodies_name_the_real_problem(alice: Api, rgb: dict, text: str, field: str, needle: str) -> None:
    before = counts()
    r = alice.post(
        f"/datasets/{rgb['dataset']['id']}/jobs", content=text.encode(), headers={"Content-Type": "application/json"}
    )
    body = refused(r, field=field, needle=needle)
    assert "UTF-8" not in body["detail"] and '"0"' not in json.dumps(body["errors"]), body
    assert counts() == before


def test_a_non_json_body_without_content_type_names_the_body(alice: Api, rgb: dict) -> None:
    r = alice.post(f"/datasets/{rgb['dataset']['id']}/jobs", content=b"{oops")
    body = refused(r, field="body", needle="not a JSON object")
    assert all(e["field"] != "0" for e in body["errors"]), body


@pytest.mark.parametrize(
    "text",
    ['{"name": "x", "classes": ["a"], "items": ' + DEEP + "}", '{"name": "x", "classes": [' + BIG + "]}"],
    ids=["deep", "big-int"],
)
def test_json_dataset_create(alice: Api, text: str) -> None:
    before = counts()
    refused(alice.post("/datasets", content=text.encode(), headers={"Content-Type": "application/json"}))
    assert counts() == before


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://[2002:7f00:1::1]/x", "6to4 (2002::/16, a tunnel to 127.0.0.1)"),
        ("http://[2002:5db8:d70e::1]/x", "6to4"),
        ("http://[fec0::1]/x", "site-local"),
    ],
)
def test_webhook_urls_to_tunnels_and_site_local_are_refused(alice: Api, url: str, needle: str) -> None:
    before = counts()
    body = refused(alice.post("/webhooks", json={"url": url}), field="url")
    assert needle in body["errors"][0]["message"], body
    assert counts() == before


def test_web_job_feed_caps_after(alice: Api, rgb: dict) -> None:
    from tests.app.test_web import sign_in

    sign_in(alice.client, alice.key)
    job_id = rgb["job"]["id"]
    ok = alice.client.get(f"/ui/api/jobs/{job_id}", params={"after": 2**63 - 1})
    assert ok.status_code == 200, ok.text
    refused(alice.client.get(f"/ui/api/jobs/{job_id}", params={"after": 2**63}), field="after")
