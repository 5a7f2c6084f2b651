"""Session fixtures for tests that need the reference backbone or the CIFAR-10 archive.

Import them into a test module (``from tests.ml.reference_fixtures import *``) so pytest
registers them there. The reference backbone is built once into ``<repo>/var/test-models`` (gitignored) and
reused by later sessions and by subprocesses (``tagsift build-reference-backbone --cache-dir`` that folder);
concurrent builders serialise on a file lock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["cifar10_path", "reference_build", "reference_cache_dir", "reference_open_clip"]

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_CACHE_DIR = ROOT / "var" / "test-models"


def _cifar10_archive() -> Path:
    from app.config import Settings

    path = Path(Settings().cifar10_path).expanduser()
    return path if path.is_absolute() else (ROOT / path).resolve()


@pytest.fixture(scope="session")
def reference_cache_dir() -> Path:
    """The shared cache folder (``var/test-models``); skips when the reference packages are not installed."""
    from ml.reference import ReferenceBuildError, reference_parts

    try:
        reference_parts()
    except ReferenceBuildError as e:
        pytest.skip(f"reference backbone packages unavailable: {e}")
    REFERENCE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return REFERENCE_CACHE_DIR


@pytest.fixture(scope="session")
def reference_build(reference_cache_dir: Path):
    """The reference backbone, built (about 1-2 minutes on 2 cores) on the first session that needs it."""
    from ml.reference import build_reference_backbone

    return build_reference_backbone(reference_cache_dir)


@pytest.fixture(scope="session")
def reference_open_clip(reference_build, reference_cache_dir: Path):
    """(model, eval preprocess, tokenizer) loaded through open_clip's ordinary path."""
    from ml.reference import load_reference_open_clip

    return load_reference_open_clip(reference_cache_dir)


@pytest.fixture(scope="session")
def cifar10_path() -> Path:
    """The CIFAR-10 JPEG archive (TAGSIFT_CIFAR10_PATH, default ../shared/data/cifar10-jpg.tar.gz)."""
    path = _cifar10_archive()
    if not path.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {path} (set TAGSIFT_CIFAR10_PATH)")
    return path
