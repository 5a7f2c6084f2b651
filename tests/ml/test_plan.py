"""ml.pipeline's plan of a job: plain data decided before any feature exists (issue 21, deliverable 2)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ml.errors import InvalidCandidates
from ml.methods import METHODS
from ml.pipeline import JobConfig, job_config, plan_job
from ml.train import TrainConfig

CLASSES = ["cat", "dog", "bird"]


def test_job_config_reads_every_param_once_and_fills_the_defaults() -> None:
    run = {"views": 2, "shots": 1, "knn_vote": True, "knn_k": 4, "knn_tau": 0.5, "handcrafted_mix": 0.25}
    params = {"method": "coop", "loss": "plcr", "epochs": 3, **run}
    config = job_config(params, "a photo of a {}.", default_views=7)
    assert config.train == TrainConfig(method="coop", loss="plcr", epochs=3, templates=("a photo of a {}.",))
    assert {name: getattr(config, name) for name in run} == run
    bare = job_config({}, None, default_views=7)
    assert bare == JobConfig(train=TrainConfig(), views=7)  # no views asked: the worker's default


def test_the_plan_is_plain_data_with_the_features_it_needs() -> None:
    candidates = [["cat", "dog"], ["cat", "bird"], ["dog"], ["cat", "dog", "bird"], ["bird", "dog"], ["cat"]]
    tags = [None, "cat", None, None, None, None]
    shas = ["a", "b", "c", "d", "e", "a"]  # two items share an image
    config = job_config({"method": "coop", "loss": "plcr", "views": 2, "shots": 1}, None)
    plan = plan_job(CLASSES, candidates, tags, shas, config)

    json.dumps(dataclasses.asdict(plan))  # nothing but data: no tensor, no callable
    assert plan.candidates[1] == ["cat"] and plan.original[1] == ["cat", "bird"] and plan.certain[1]
    assert plan.views == 3  # PLCR takes 3 distinct views per step: 2 asked are raised to 3
    assert plan.holdout == []  # too few certain items to hold any out
    per_class: dict[str, int] = {}
    for i in plan.train_idx:  # shots=1: each training item counts for one class, none counted twice
        cls = min(plan.candidates[i], key=lambda c: per_class.get(c, 0))
        per_class[cls] = per_class.get(cls, 0) + 1
    assert plan.train_idx and max(per_class.values()) == 1 and 1 in plan.train_idx  # certain items come first
    views = {sha: max(plan.views if i in plan.train_idx else 1 for i in range(6) if shas[i] == sha) for sha in shas}
    assert plan.needs == list(views.items())  # each image once, in item order


def test_bad_candidate_sets_fail_at_planning_naming_the_item() -> None:
    config = job_config({}, None)
    with pytest.raises(InvalidCandidates, match="item 1: candidate 'fish' is not in the class list"):
        plan_job(CLASSES, [["cat"], ["fish"]], [None, None], ["a", "b"], config)
    with pytest.raises(InvalidCandidates, match="item 0: empty candidate set"):
        plan_job(CLASSES, [[], ["cat"]], [None, None], ["a", "b"], config)


def test_every_registered_method_plans_its_views() -> None:
    for name, method in METHODS.items():
        config = job_config({"method": name, "loss": "plcr", "views": 2}, None)
        plan = plan_job(CLASSES, [["cat", "dog"]] * 3, [None] * 3, ["a", "b", "c"], config)
        # PLCR takes 3 distinct views per step; a method that never trains takes the 2 asked for, no more
        assert plan.views == (3 if method.trains else 2)
