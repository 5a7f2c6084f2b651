"""Contracts between app/ and ml/, which may not import each other: the API's job-parameter schema against ml's
TrainConfig, methods and losses, and the preprocessing that ml exports against what app's /predict reads.

Each test fails when one side changes without the other (the reason the two sides are tied here, in tests, which
may import both)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from app import job_defaults
from app import schemas as api
from app.imaging import PreprocessConfig as AppPreprocess
from ml import pipeline
from ml.align import MIX_MODES
from ml.backbone import PreprocessConfig as MlPreprocess
from ml.losses import ALIASES, LOSSES
from ml.train import METHODS as ML_METHODS
from ml.train import TrainConfig, _check_config

ML_LOSSES = set(LOSSES) - set(ALIASES)
TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _literal_values(field: str) -> set:
    annotation = api.JobCreate.model_fields[field].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    values: set = set()
    for arg in typing.get_args(annotation):  # Literal[...] | None
        values.update(typing.get_args(arg) if typing.get_origin(arg) is typing.Literal else ())
    return values


def test_every_job_param_is_a_train_config_field_or_a_run_param() -> None:
    api_fields = set(api.JobCreate.model_fields)
    assert api_fields - set(TRAIN_FIELDS) - set(api.PLACEMENT_PARAMS) == set(pipeline.RUN_PARAMS)
    assert set(pipeline.RUN_PARAMS).isdisjoint(TRAIN_FIELDS)
    assert set(TRAIN_FIELDS) <= api_fields, "a TrainConfig field the API cannot set"


def test_methods_and_losses_are_the_same_lists() -> None:
    assert set(api.METHODS) == set(ML_METHODS)
    assert _literal_values("method") == {"auto", *ML_METHODS}
    assert all(LOSSES[alias] is LOSSES[name] for alias, name in ALIASES.items())
    assert set(api.LOSSES) == ML_LOSSES
    assert _literal_values("loss") == ML_LOSSES
    assert _literal_values("mix") == set(MIX_MODES)
    assert set(job_defaults.METHOD_DEFAULTS) == set(ML_METHODS)


@pytest.mark.parametrize("field", ["class_token_position", "precision", "mix"])
def test_every_value_the_api_accepts_ml_accepts(field: str) -> None:
    for value in _literal_values(field):
        _check_config(dataclasses.replace(TrainConfig(), **{field: value}))


def test_the_api_defaults_are_ml_defaults() -> None:
    for name, info in api.JobCreate.model_fields.items():
        if name == "method":  # "auto" is the API's: app/job_defaults.py resolves it before ml sees it
            continue
        if name in TRAIN_FIELDS and info.default is not None:
            assert info.default == TRAIN_FIELDS[name].default, name


@pytest.mark.parametrize("method", ["auto", *ML_METHODS])
@pytest.mark.parametrize("items", [160, 5000])
def test_resolved_defaults_build_a_valid_train_config(method: str, items: int) -> None:
    body = api.JobCreate(method=method).model_dump()
    params = job_defaults.resolve_job_params(body, items=items, classes=10)
    cfg = pipeline.train_config(params, "a photo of a {}.")
    _check_config(cfg)
    assert cfg.method == params["method"] and cfg.loss == params["loss"] and cfg.epochs == params["epochs"]


def test_preprocess_contract_is_the_same_on_both_sides() -> None:
    app_fields = [(f.name, f.default) for f in dataclasses.fields(AppPreprocess)]
    ml_fields = [(f.name, f.default) for f in dataclasses.fields(MlPreprocess)]
    assert app_fields == ml_fields
    written = MlPreprocess(image_size=224, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)).to_dict()
    read = AppPreprocess.from_dict(written)
    assert dataclasses.asdict(read) == dataclasses.asdict(MlPreprocess.from_dict(written))
    # preprocess.json states every step in words, the same on both sides (the export's predict.py follows them)
    assert read.to_dict() == written
