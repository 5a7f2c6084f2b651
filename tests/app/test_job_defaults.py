"""Job defaults follow the reproduction benchmark's validated choices (app/job_defaults.py)."""

from __future__ import annotations

import pytest

from app.job_defaults import AUTO_METHOD, METHOD_DEFAULTS, param_problems, resolve_job_params
from app.schemas import JobCreate


def _resolve(body: dict, items: int, classes: int = 10) -> dict:
    return resolve_job_params(JobCreate(**body).model_dump(), items=items, classes=classes)


@pytest.mark.parametrize("items", [2, 10 * 16, 10 * 99, 10 * 100, 10 * 500, 10**6])
def test_auto_is_the_aligned_head_at_every_size(items: int) -> None:
    p = _resolve({}, items=items)
    d = METHOD_DEFAULTS[AUTO_METHOD]
    assert AUTO_METHOD == "aligned_head" and p["method"] == "aligned_head" and p["requested_method"] == "auto"
    assert {k: p[k] for k in d} == d
    assert p["mix"] == "trust" and p["prior_strength"] > 0 and p["loss"] == "rc"


def test_rc_only_defaults_are_left_out_with_another_loss_and_refusals_name_the_field() -> None:
    p = _resolve({"loss": "cc"}, items=5000)
    assert p["method"] == "aligned_head" and p["graph_weight"] is None and param_problems(p) == []
    bad = _resolve({"loss": "cc", "graph_weight": 0.5}, items=5000)
    assert [f for f, _ in param_problems(bad)] == ["graph_weight"]
    assert [f for f, _ in param_problems(_resolve({"method": "coop", "mix": "trust"}, items=50))] == ["mix"]
    assert param_problems(_resolve({"method": "prompt_alignment", "mix": "trust"}, items=50)) == []


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
    assert f"method `auto` trains `{AUTO_METHOD}` at every dataset size" in text
    for method, d in METHOD_DEFAULTS.items():
        assert f"`{method}`: {d['loss']} loss, {d['epochs']} epochs, lr {d['lr']:g}" in text, method
    # nothing else in the operation's text claims a default of its own
    assert (text + op.get("summary", "")).count(" epochs") == len(METHOD_DEFAULTS)
    resolved = _resolve({}, items=10 * 16)
    assert f"`{resolved['method']}`: {resolved['loss']} loss, {resolved['epochs']} epochs" in text
