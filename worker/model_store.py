"""Storing a job's model: its head and side files, and the backbone's image tower only when it is not stored yet.

A model is ``tower.onnx`` + ``tower.json`` (the backbone's, shared by all its models) and ``head.npz`` +
``classes.json`` + ``preprocess.json`` + ``model_card.md`` (its own), every file a content-addressed blob
(``app.storage``). The tower has a second name, its content address (``ml.export.tower_address``: backbone id,
weights sha256, preprocessing, export settings), known before anything is exported: the named object
``towers/<address>.json`` holds its tower.json, which names the tower.onnx blob. A job whose backbone's tower is
there stores a few KB; the first job of a backbone (or of new export settings) exports and stores the tower once.

Two workers that export the same tower at once store the same bytes (a blob is keyed by its sha256) or, should the
exporter not be byte-for-byte reproducible, two blobs, each referenced by the models that use it: nothing is lost.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from app.storage import BlobStore
from ml.files import atomic_write_bytes

log = logging.getLogger("worker.training")

TOWERS = "towers"
#: The tower.json field naming its tower.onnx blob (the rest is ``ml.export.tower_info``).
ONNX_SHA = "onnx_sha256"


def tower_key(address: str) -> str:
    return f"{TOWERS}/{address}.json"


def stored_tower(storage: BlobStore, address: str) -> bytes | None:
    """The stored tower.json of ``address`` when it and its tower.onnx blob are in the store, else None."""
    key = tower_key(address)
    if not storage.download(key):
        return None
    data = storage.local(key).read_bytes()
    try:
        sha = json.loads(data)[ONNX_SHA]
    except (ValueError, KeyError, TypeError):
        log.warning("tower %s: unreadable %s, exported again", address, key)
        return None
    return data if storage.exists(sha) else None


def store_tower(storage: BlobStore, backbone, work: Path) -> bytes:
    """tower.json of ``backbone``'s tower, exported into ``work`` and stored when its address is not stored yet."""
    from ml.export import export_tower, tower_address  # torch: only in the process that runs the job

    address = tower_address(backbone)
    found = stored_tower(storage, address)
    if found is not None:
        return found
    paths = {"tower": work / "tower.onnx", "info": work / "tower.json"}
    if not all(p.is_file() for p in paths.values()):  # a retry after a store outage does not export again
        paths = export_tower(backbone, work)
    info = json.loads(paths["info"].read_text())
    info[ONNX_SHA] = storage.put_file(paths["tower"])
    data = (json.dumps(info, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(storage.local(tower_key(address)), data)  # the file store's own file: readers see all or none
    storage.upload(tower_key(address))
    log.info("tower %s of %s: stored (%d bytes)", address[:16], backbone.id, paths["tower"].stat().st_size)
    return data


def store_model(storage: BlobStore, backbone, files: dict[str, Path], card: bytes, work: Path) -> dict[str, str]:
    """Every artifact of the model by name -> blob sha256: the job's ``files`` (head.npz, classes.json,
    preprocess.json), its card, and the backbone's tower (:func:`store_tower`)."""
    tower = store_tower(storage, backbone, work)
    stored = {name: storage.put_file(path) for name, path in files.items()}
    stored["model_card.md"] = storage.put(card)
    stored["tower.onnx"] = json.loads(tower)[ONNX_SHA]
    stored["tower.json"] = storage.put(tower)
    return stored
