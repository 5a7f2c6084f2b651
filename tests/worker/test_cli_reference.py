"""`tagsift build-reference-backbone`: a real subprocess against the session's cached reference build."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.ml.reference_fixtures import *  # noqa: F403 - pytest fixtures (reference_build, reference_cache_dir)

ROOT = Path(__file__).resolve().parents[2]
TAGSIFT = ROOT / ".venv" / "bin" / "tagsift"


def test_build_reference_backbone_command_reuses_cache(reference_build, reference_cache_dir):
    proc = subprocess.run(
        [str(TAGSIFT), "build-reference-backbone", "--cache-dir", str(reference_cache_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "effnetlite0-minilm (cached" in out
    assert f"config: {reference_build.config_path}" in out
    assert f"checkpoint: {reference_build.checkpoint_path}" in out
    assert f"r2: {reference_build.r2:.4f}" in out
    assert json.loads(reference_build.config_path.read_text())["embed_dim"] == 1280


def test_build_reference_backbone_command_help():
    proc = subprocess.run([str(TAGSIFT), "build-reference-backbone", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--cache-dir" in proc.stdout and "--force" in proc.stdout
