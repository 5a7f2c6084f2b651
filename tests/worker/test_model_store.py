"""worker.model_store: a job stores its head and side files, and the backbone's image tower only when its content
address is not stored yet: on the file store and on a real S3 server, where another machine finds the tower the
first one stored. The second model of a backbone adds a few KB, not a tower."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from app.config import Settings
from app.storage import LocalBlobStore, get_storage, open_storage
from ml.export import export_head, tower_address
from tests.ml.conftest import tiny_configs, tiny_native  # noqa: F401 - fixtures
from worker.model_store import ONNX_SHA, store_model, tower_key


def _head(backbone, tmp: Path, seed: int) -> dict[str, Path]:
    c = torch.randn(3, backbone.embed_dim, generator=torch.Generator().manual_seed(seed))
    files = export_head(c, 10.0 + seed, ["a", "b", "c"], backbone.preprocess_cfg, tmp)
    return {p.name: p for p in files.values()}


def _blob_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file())


def _store_two(storage, other, backbone, tmp_path: Path) -> tuple[dict, dict]:
    first = store_model(storage, backbone, _head(backbone, tmp_path / "h1", 1), b"# card 1\n", tmp_path / "w1")
    second = store_model(other, backbone, _head(backbone, tmp_path / "h2", 2), b"# card 2\n", tmp_path / "w2")
    return first, second


def test_the_tower_is_stored_once_per_backbone(tiny_native, tmp_path: Path):  # noqa: F811
    storage = LocalBlobStore(tmp_path / "store")
    first = store_model(storage, tiny_native, _head(tiny_native, tmp_path / "h1", 1), b"# card\n", tmp_path / "w1")
    assert set(first) == {"tower.onnx", "tower.json", "head.npz", "classes.json", "preprocess.json", "model_card.md"}
    assert all(storage.exists(sha) for sha in first.values())
    info = json.loads(storage.get(first["tower.json"]))
    assert info["address"] == tower_address(tiny_native) and info[ONNX_SHA] == first["tower.onnx"]
    assert storage.local(tower_key(info["address"])).read_bytes() == storage.get(first["tower.json"])
    after_one = _blob_bytes(storage.root)

    second = store_model(storage, tiny_native, _head(tiny_native, tmp_path / "h2", 2), b"# card 2\n", tmp_path / "w2")
    assert not (tmp_path / "w2" / "tower.onnx").exists()  # found by its address: not exported again
    assert second["tower.onnx"] == first["tower.onnx"] and second["tower.json"] == first["tower.json"]
    assert second["head.npz"] != first["head.npz"]
    added = _blob_bytes(storage.root) - after_one
    head = (tmp_path / "h2" / "head.npz").stat().st_size
    assert 0 < added <= head + 1024 < storage.path_if_local(first["tower.onnx"]).stat().st_size


def test_a_lost_tower_blob_is_exported_again(tiny_native, tmp_path: Path):  # noqa: F811
    storage = LocalBlobStore(tmp_path / "store")
    first = store_model(storage, tiny_native, _head(tiny_native, tmp_path / "h1", 1), b"# card\n", tmp_path / "w1")
    storage.delete(first["tower.onnx"])
    again = store_model(storage, tiny_native, _head(tiny_native, tmp_path / "h1", 1), b"# card\n", tmp_path / "w2")
    assert (tmp_path / "w2" / "tower.onnx").exists() and storage.exists(again["tower.onnx"])


def test_another_machine_finds_the_tower_in_s3(s3_env, tiny_native, tmp_path: Path):  # noqa: F811
    here = get_storage()
    url = f"s3://{here.bucket}/{here.prefix}"
    there = open_storage(Settings(data_dir=tmp_path / "machine-2", storage_url=url, s3_endpoint_url=here.endpoint_url))
    first, second = _store_two(here, there, tiny_native, tmp_path)
    assert not (tmp_path / "w2" / "tower.onnx").exists()  # machine 2 downloaded the index, exported nothing
    assert second["tower.onnx"] == first["tower.onnx"]
    assert there.missing(second.values()) == set()
