"""Job defaults follow the reproduction benchmark's validated choices (app/job_defaults.py)."""

from __future__ import annotations

import pytest

from app.job_defaults import AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS, METHOD_DEFAULTS, resolve_job_params
from app.schemas import JobCreate


def _resolve(body: dict, items: int, classes: int = 10) -> dict:
    return resolve_job_params(JobCreate(**body).model_dump(), items=items, classes=classes)


def test_auto_trains_prompts_on_few_items_per_class() -> None:
    p = _resolve({}, items=10 * 16)
    assert (p["method"], p["loss"], p["epochs"], p["lr"]) == ("prompt_alignment", "pico", 10, 0.002)
    assert p["requested_method"] == "auto" and p["mix"] == "none"


def test_auto_trains_the_linear_probe_on_many_items_per_class() -> None:
    p = _resolve({}, items=10 * AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS)
    assert (p["method"], p["loss"], p["epochs"], p["lr"]) == ("linear_probe", "rc", 100, 25.0)
    assert (p["knn_vote"], p["knn_k"], p["knn_tau"], p["handcrafted_mix"]) == (True, 10, 0.5, 0.5)
    assert _resolve({}, items=10 * AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS - 1)["method"] == "prompt_alignment"


@pytest.mark.parametrize("method", sorted(METHOD_DEFAULTS))
def test_explicit_method_gets_its_own_defaults_and_explicit_values_win(method: str) -> None:
    p = _resolve({"method": method}, items=5000)
    assert p["method"] == method and p["requested_method"] == method
    assert {k: p[k] for k in METHOD_DEFAULTS[method]} == METHOD_DEFAULTS[method]
    body = {"method": method, "loss": "cc", "epochs": 7, "lr": 0.5, "knn_vote": False, "handcrafted_mix": 0.0}
    q = _resolve(body, items=5000)
    assert {k: q[k] for k in body} == body


def test_the_jobs_route_describes_the_real_defaults() -> None:
    """The OpenAPI description of POST /datasets/{id}/jobs states each method's defaults from app/job_defaults.py."""
    from app.main import create_app

    op = create_app().openapi()["paths"]["/datasets/{dataset_id}/jobs"]["post"]
    text = op["description"]
    assert f"at least {AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS} items per class" in text
    for method, d in METHOD_DEFAULTS.items():
        assert f"`{method}`: {d['loss']} loss, {d['epochs']} epochs, lr {d['lr']:g}" in text, method
    # nothing else in the operation's text claims a default of its own
    assert "50 epochs" not in text + op.get("summary", "")
    resolved = _resolve({}, items=10 * 16)
    assert f"`{resolved['method']}`: {resolved['loss']} loss, {resolved['epochs']} epochs" in text
