"""Prompt templates: the API takes exactly what ml can train on (exactly one "{}"), else 422 naming the field."""

from __future__ import annotations

import pytest

from tests.app.conftest import Api, image_bytes

BAD = ["no slot", "{} and {}", "a photo of a {}, not a {}."]


@pytest.mark.parametrize("template", BAD)
def test_job_templates_without_exactly_one_slot_are_refused(alice: Api, template: str) -> None:
    ds = alice.make_dataset(2)
    r = alice.post(f"/datasets/{ds['id']}/jobs", json={"templates": ["a photo of a {}.", template]})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]
    assert any(e["field"].split(".")[0] == "templates" for e in errors), errors
    assert any('exactly one "{}"' in e["message"] and "template 1" in e["message"] for e in errors), errors


@pytest.mark.parametrize("template", BAD)
def test_dataset_prompt_templates_without_exactly_one_slot_are_refused(alice: Api, template: str) -> None:
    r = alice.post("/datasets", json={"name": "t", "classes": ["cat", "dog"], "prompt_template": template})
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["field"] == "prompt_template" and 'exactly one "{}"' in e["message"] for e in errors), errors
    rows = [{"file": "a.png", "candidates": ["cat", "dog"]}]
    form = alice.upload("/datasets", rows, {"a.png": image_bytes(0)}, name="t", prompt_template=template)
    assert form.status_code == 422, form.text
    errors = form.json()["errors"]
    assert any(e["field"] == "prompt_template" and 'exactly one "{}"' in e["message"] for e in errors), errors


def test_a_template_with_other_braces_is_accepted(alice: Api) -> None:
    ds = alice.make_dataset(2)
    r = alice.post(f"/datasets/{ds['id']}/jobs", json={"templates": ["a {blurry} photo of a {}."], "epochs": 1})
    assert r.status_code == 202, r.text
