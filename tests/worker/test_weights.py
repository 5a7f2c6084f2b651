"""CLIP weights in TAGSIFT_MODEL_CACHE_DIR: offline and absent, a job fails naming the command to run; a checkpoint
brought on disk is installed by ``tagsift weights install`` (only when it loads) and then loads offline.

No test downloads anything: "RN50:openai" is a real open_clip tag whose weights are not on this machine, and the file
installed is a seeded random-init RN50 (the architecture open_clip's strict load checks), saved in half precision.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.queue import enqueue_job
from ml.backbone import load_backbone
from ml.spec import parse_backbone
from ml.weights import WeightsMissing, find_local, open_clip_cache
from tests.worker.conftest import ROOT, TAGSIFT, make_dataset, make_job, wait_status

pytestmark = pytest.mark.integration

ABSENT = "RN50:openai"


def _tagsift(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    cmd = [str(TAGSIFT)] if TAGSIFT.exists() else [sys.executable, "-m", "worker.cli"]
    return subprocess.run([*cmd, *args], env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True)


def test_offline_load_of_absent_weights_says_where_they_come_from(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as caught:
        load_backbone(ABSENT, cache_dir=tmp_path, offline=True)
    err = caught.value
    assert err.offline and err.backbone == ABSENT and err.cache_dir == tmp_path
    assert "huggingface.co/timm/resnet50_clip.openai" in err.source
    assert find_local(parse_backbone(ABSENT), tmp_path) is None
    assert not open_clip_cache(tmp_path).exists()  # nothing was attempted


@pytest.mark.parametrize("offline", [False, True])
def test_a_worker_keeps_hugging_face_downloads_under_the_model_cache(tmp_path: Path, offline: bool) -> None:
    """What a worker process sets before anything imports huggingface_hub (worker.celery_app): HF_HOME under
    TAGSIFT_MODEL_CACHE_DIR, so open_clip's text towers and tokenizers land there too, and the hub offline with
    TAGSIFT_OFFLINE; the library itself reads those values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSIFT_", "HF_"))}
    env.update(TAGSIFT_DATA_DIR=str(tmp_path / "var"), TAGSIFT_MODEL_CACHE_DIR=str(tmp_path / "models"))
    if offline:
        env["TAGSIFT_OFFLINE"] = "true"
    code = (
        "import os, worker.celery_app; import huggingface_hub.constants as c; "
        "print(os.environ['HF_HOME'], c.HF_HOME, c.HF_HUB_OFFLINE, os.environ.get('HF_HUB_OFFLINE', '-'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    home = str(tmp_path / "models" / "huggingface")
    assert out.stdout.split() == [home, home, str(offline), "1" if offline else "-"], out.stderr[-2000:]


def test_offline_job_with_absent_weights_fails_naming_the_commands(prod_env, start_worker) -> None:
    owner, ds, _ = make_dataset(3)
    job_id = make_job(owner, ds, epochs=1)
    worker = start_worker(TAGSIFT_BACKBONE=ABSENT, TAGSIFT_OFFLINE="true")
    enqueue_job(job_id, "auto")
    job = wait_status(job_id, ("succeeded", "failed"), timeout=120)
    assert (job.status, job.error_code) == ("failed", "weights_missing"), worker.log()[-3000:]
    assert f"tagsift weights install {ABSENT} <file>" in job.error_message
    assert f"tagsift weights download {ABSENT}" in job.error_message
    assert "offline" in job.error_message and str(prod_env.model_cache_dir) in job.error_message


def test_weights_install_checks_the_file_then_loads_offline(tmp_path: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    cache = tmp_path / "models"
    env = {"TAGSIFT_MODEL_CACHE_DIR": str(cache), "TAGSIFT_DATA_DIR": str(tmp_path / "var"), "TAGSIFT_OFFLINE": "1"}

    torch.manual_seed(0)
    rn50 = open_clip.create_model("RN50", pretrained=None)
    state = {k: v.half().contiguous() for k, v in rn50.state_dict().items()}
    del rn50

    # A file that does not hold this architecture (three tensors short) is refused, and nothing is installed.
    wrong = tmp_path / "truncated.safetensors"
    save_file(dict(list(state.items())[:-3]), str(wrong))
    res = _tagsift(env, "weights", "install", ABSENT, str(wrong))
    assert res.returncode == 1 and "does not load as the weights of 'RN50:openai'" in res.stderr, res.stderr
    assert _tagsift(env, "weights", "where", ABSENT).returncode == 1

    # The right architecture installs, and loads offline with exactly its values.
    good = tmp_path / "open_clip_model.safetensors"
    save_file(state, str(good))
    res = _tagsift(env, "weights", "install", ABSENT, str(good))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "loads offline" in res.stdout
    where = _tagsift(env, "weights", "where", ABSENT)
    installed = Path(where.stdout.strip())
    assert where.returncode == 0 and installed.is_file() and installed.is_relative_to(cache / "installed")

    backbone = load_backbone(ABSENT, cache_dir=cache, offline=True)
    assert backbone.id == ABSENT  # the tag's id: caches keyed on it are shared with a downloaded copy
    key = next(iter(state))
    assert torch.equal(backbone.model.state_dict()[key].half(), state[key])
    assert backbone.preprocess_cfg.image_size == 224
