"""worker.job_files against a real S3 server: what one machine's job stores (checkpoint, features) another machine's
re-run finds, images arrive as local files in the bounded cache, and an unreachable store is retried, then named."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.storage import StorageUnavailable, get_storage, open_storage
from worker.job_files import JobFiles, checkpoint_key, retry_storage


def _other_machine(tmp_path: Path, name: str):
    """The same store, seen from another machine: the same settings but a data folder of its own."""
    settings = get_storage()
    url = f"s3://{settings.bucket}/{settings.prefix}"
    return open_storage(Settings(data_dir=tmp_path / name, storage_url=url, s3_endpoint_url=settings.endpoint_url))


def test_what_one_machine_stores_another_finds(s3_env, tmp_path: Path):
    here = get_storage()
    there = _other_machine(tmp_path, "machine-2")
    assert here.cache_dir != there.cache_dir

    shas = here.put_many([b"image one", b"image two"])
    files = JobFiles(here, "job-1", patience=5)
    paths = files.images(shas)
    assert [p.read_bytes() for p in paths] == [b"image one", b"image two"]
    assert all(p.is_relative_to(here.cache_dir) for p in paths) and files.pinned == paths

    # the checkpoint: written by ml here after an epoch, stored, found by the re-run on machine 2
    ckpt = files.checkpoint()
    assert not ckpt.exists()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"epoch 2 state")
    assert files.save_checkpoint() is None
    rerun = JobFiles(there, "job-1", patience=5)
    assert rerun.checkpoint().read_bytes() == b"epoch 2 state"

    # features: encoded here, uploaded in the background, prefetched there
    cache = files.feature_cache("tiny-backbone", shas, views=2, seed=3)
    cache.put("tiny-backbone", shas[0], 0, torch.arange(4.0))
    cache.put("tiny-backbone", shas[0], 1, torch.ones(4), seed=3)
    files.flush_features()
    cache.close()
    assert cache.failed == 0
    there_cache = rerun.feature_cache("tiny-backbone", shas, views=2, seed=3)
    assert torch.equal(there_cache.get("tiny-backbone", shas[0], 0), torch.arange(4.0))
    assert torch.equal(there_cache.get("tiny-backbone", shas[0], 1, seed=3), torch.ones(4))
    assert there_cache.get("tiny-backbone", shas[1], 0) is None
    there_cache.close()

    # the job ends: its checkpoint goes from the store and from this machine
    rerun.remove()
    assert not there.download(checkpoint_key("job-1")) and not rerun.checkpoint().exists()
    files.release()
    assert files.pinned == []


def test_an_unreachable_store_is_retried_then_named(tmp_path: Path, s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    store = open_storage(
        Settings(data_dir=tmp_path, storage_url="s3://tagsift-x/p", s3_endpoint_url="http://127.0.0.1:1")
    )
    files = JobFiles(store, "job-2", patience=1.5)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"^job job-2: fetching its images: the object store did not answer"):
        files.images(["0" * 64])
    assert time.monotonic() - t0 >= 1.0  # retried for its patience, not failed at the first refusal
    # a checkpoint that cannot be stored does not stop the run: the error comes back as a message
    ckpt = store.local(checkpoint_key("job-2"))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"state")
    assert "storing its checkpoint" in (files.save_checkpoint() or "")
    # other errors are not retried
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("blob x")

    with pytest.raises(FileNotFoundError):
        retry_storage(missing, what="x", patience=5)
    assert calls == [1]
