"""Contracts between app/ and ml/, which may not import each other: the API's job-parameter schema against ml's
TrainConfig, methods and losses, and the preprocessing that ml exports against what app's /predict reads.

Each test fails when one side changes without the other (the reason the two sides are tied here, in tests, which
may import both)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import vocab
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


def test_ml_registries_are_the_shared_names() -> None:
    """ml's methods and losses (its own registries) are exactly vocab's, and the API offers vocab's: a method or a
    loss added on one side only fails here."""
    assert tuple(sorted(ML_METHODS)) == tuple(sorted(vocab.METHODS))
    assert set(vocab.LOSSES) == ML_LOSSES
    assert ALIASES == vocab.LOSS_ALIASES and set(LOSSES) == set(vocab.LOSSES) | set(vocab.LOSS_ALIASES)
    assert set(MIX_MODES) == set(vocab.MIX_MODES)
    assert tuple(api.METHODS) == vocab.METHODS and tuple(api.LOSSES) == vocab.LOSSES


def test_the_web_form_offers_what_the_api_accepts() -> None:
    """The job form's choices and help lines (app/web/pages.py) are vocab's names, each one the API takes."""
    from app.web import pages

    assert set(pages.METHODS) == _literal_values("method") and len(pages.METHODS) == len(set(pages.METHODS))
    assert set(pages.LOSSES) == {""} | _literal_values("loss") and len(pages.LOSSES) == len(set(pages.LOSSES))
    assert set(pages.JOB_HELP) <= set(api.JobCreate.model_fields)
    assert set(pages._INT_FIELDS) | set(pages._FLOAT_FIELDS) == set(vocab.PARAMS)
    assert set(pages.METHOD_HELP) == set(pages.METHODS) and all(pages.METHOD_HELP.values())


def test_every_numeric_job_param_has_its_bounds_and_default_from_vocab() -> None:
    """The API's numeric job parameters are vocab.PARAMS (defaults and bounds), and ml's defaults are the same."""
    schema = api.JobCreate.model_json_schema()["properties"]
    numeric = {name for name, prop in schema.items() if {"integer", "number"} & _json_types(prop)}
    assert numeric == set(vocab.PARAMS)
    for name, param in vocab.PARAMS.items():
        prop = schema[name]
        assert prop.get("default") == param.default, name
        inner = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
        bounds = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
        assert {bounds[k]: v for k, v in param.bounds().items()} == {k: inner[k] for k in bounds.values() if k in inner}
        assert inner["type"] == ("integer" if param.integer else "number"), name
        if name in TRAIN_FIELDS and param.default is not None:
            assert TRAIN_FIELDS[name].default == param.default, name


def _json_types(prop: dict) -> set[str]:
    return {p.get("type") for p in prop.get("anyOf", [prop])}


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


@pytest.mark.parametrize(
    "template",
    ["a photo of a {}.", "{}", "a {blurry} photo of a {}.", "no slot", "{} and {}", "{{}}", "a {0} photo", "x" * 501],
)
def test_the_api_accepts_a_prompt_template_exactly_when_ml_does(template: str) -> None:
    """Both sides' rule is exactly one "{}" (the API also caps the length, which ml never sees beyond)."""
    from pydantic import ValidationError

    from ml.prompts import validate_templates

    try:
        validate_templates([template])
        ml_ok = len(template) <= api.TEMPLATE_MAX_LENGTH
    except ValueError:
        ml_ok = False
    try:
        api.JobCreate(templates=[template])
        job_ok = True
    except ValidationError:
        job_ok = False
    try:
        api.DatasetCreate(name="d", classes=["a", "b"], prompt_template=template)
        dataset_ok = True
    except ValidationError:
        dataset_ok = False
    assert job_ok == dataset_ok == ml_ok, (template, job_ok, dataset_ok, ml_ok)
    assert (api.template_problem(template) is None) == ml_ok


def test_the_head_and_tower_ml_writes_are_what_app_reads(tmp_path) -> None:
    """head.npz's arrays and the tower's output name (ml.export writes them, app.towers reads them)."""
    import numpy as np
    import torch

    from app import towers
    from app.imaging import PREPROCESS_STEPS
    from ml import export

    assert towers.HEAD_ARRAYS == export.HEAD_ARRAYS
    assert towers.TOWER_OUTPUT == export.TOWER_OUTPUT and PREPROCESS_STEPS["input"] == export.TOWER_INPUT
    assert PREPROCESS_STEPS["output"] == towers.MERGED_OUTPUT
    c, b = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0.5, 0.0, -1.0, 2.0])
    pre = MlPreprocess(8, (0.1,) * 3, (0.2,) * 3)
    paths = export.export_head(c, 7.5, ["a", "b", "c", "d"], pre, tmp_path, class_bias=b)
    head = towers.Head.from_npz(paths["head"].read_bytes())
    f = torch.nn.functional.normalize(torch.randn(3, 6), dim=1)
    assert np.allclose(head.logits(f.numpy()), (7.5 * f @ c.T + b).numpy(), atol=1e-5)
    first = paths["head"].read_bytes()
    export.export_head(c, 7.5, ["a", "b", "c", "d"], pre, tmp_path, class_bias=b)
    assert paths["head"].read_bytes() == first  # the same head gives the same bytes: stored once
