"""The blob stores: the default file store (today's layout under the data dir) and the S3 store against a real S3
server (SeaweedFS), the setting that chooses them, the bounded cache, and the 503 of an upload while the store is
down."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app.config import Settings
from app.storage import (
    LocalBlobStore,
    S3BlobStore,
    StorageConfigError,
    StorageUnavailable,
    get_storage,
    open_storage,
    sha256_hex,
    trim_cache,
)


def _roundtrip(store, tmp_path: Path) -> None:
    a, b = b"first blob", os.urandom(3 * 1024 * 1024)
    assert store.put_many([a, b]) == [sha256_hex(a), sha256_hex(b)]
    sa, sb = sha256_hex(a), sha256_hex(b)
    assert store.put(a) == sa  # idempotent
    assert store.get(sa) == a
    with store.open(sb) as f:
        assert f.read() == b
    missing = sha256_hex(b"never stored")
    assert store.exists(sa) and not store.exists(missing)
    assert store.missing([sa, sb, missing]) == {missing}
    with pytest.raises(FileNotFoundError):
        store.get(missing)
    paths = store.fetch([sa, sb])
    assert [p.read_bytes() for p in paths] == [a, b]
    with pytest.raises(FileNotFoundError):
        store.fetch([missing])
    big = tmp_path / "model.onnx"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # past boto3's multipart threshold (8 MB)
    assert store.put_file(big) == sha256_hex(big.read_bytes())
    assert store.get(sha256_hex(big.read_bytes())) == big.read_bytes()
    store.delete(sa)
    assert not store.exists(sa)

    # named objects: a working copy here, uploaded and downloaded
    key = "jobs/j1/ckpt.pt"
    store.local(key).parent.mkdir(parents=True, exist_ok=True)
    store.local(key).write_bytes(b"epoch 3")
    store.upload(key)
    store.local(key).write_bytes(b"stale local copy")
    assert store.download(key) is True
    assert store.local(key).read_bytes() == (b"epoch 3" if store.remote else b"stale local copy")
    assert store.download("jobs/j1/none.pt") is False
    assert store.download_many([key, "jobs/j2/ckpt.pt"]) == 1
    store.delete_prefix("jobs/j1/")
    assert not store.local(key).exists() and store.download(key) is False
    with pytest.raises(ValueError):
        store.local("../outside")


def test_default_is_the_data_dir_layout_of_earlier_releases(embedded_env: Settings, tmp_path: Path):
    store = get_storage()
    assert isinstance(store, LocalBlobStore) and store.root == embedded_env.data_dir and not store.remote
    sha = store.put(b"image bytes")
    assert (embedded_env.data_dir / "blobs" / sha[:2] / sha[2:4] / sha).read_bytes() == b"image bytes"
    assert store.local("jobs/j/ckpt.pt") == embedded_env.data_dir / "jobs" / "j" / "ckpt.pt"
    assert store.local("features") == embedded_env.data_dir / "features"
    assert store.path_if_local(sha) == embedded_env.data_dir / "blobs" / sha[:2] / sha[2:4] / sha
    store.check()
    _roundtrip(store, tmp_path)


def test_file_url_names_another_folder(tagsift_env, tmp_path: Path):
    settings = tagsift_env(storage_url=f"file://{tmp_path / 'shared'}")
    store = get_storage()
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "shared"
    store.check()
    sha = store.put(b"x")
    assert (tmp_path / "shared" / "blobs" / sha[:2] / sha[2:4] / sha).exists()
    assert not (settings.data_dir / "blobs").exists()


def test_s3_store_roundtrip_against_a_real_server(s3_env, tmp_path: Path, s3_server):
    store = get_storage()
    assert isinstance(store, S3BlobStore) and store.remote
    store.check()
    _roundtrip(store, tmp_path)
    # the key layout in the bucket is the file store's, under the prefix
    sha = store.put(b"layout")
    keys = s3_server.keys(store.bucket, f"{store.prefix}/")
    assert f"{store.prefix}/blobs/{sha[:2]}/{sha[2:4]}/{sha}" in keys
    assert not [k for k in keys if k.startswith(f"{store.prefix}/jobs/")]  # delete_prefix removed the checkpoint
    assert store.path_if_local(sha) is None  # the API never writes a model or image to its disk
    # fetched blobs land in this machine's cache under the data dir
    (path,) = store.fetch([sha])
    assert path.is_relative_to(store.cache_dir) and path.read_bytes() == b"layout"


def test_a_client_is_made_per_process(s3_env):
    store = get_storage()
    first = store._s3()
    assert store._s3() is first
    pid = os.fork()
    if pid == 0:  # the child must not reuse the parent's connection pool
        os._exit(0 if store._s3() is not first and store.get(store.put(b"child")) == b"child" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_cache_evicts_least_recently_used_beyond_its_size(tmp_path: Path):
    folder = tmp_path / "cache" / "blobs"
    folder.mkdir(parents=True)
    now = time.time()
    files = []
    for i in range(5):
        p = folder / f"f{i}"
        p.write_bytes(b"x" * 100)
        os.utime(p, (now - 1000 + i, now - 1000 + i))  # f0 oldest
        files.append(p)
    os.utime(files[1], (now, now))  # f1 just used: within the grace period
    freed = trim_cache([folder], 250, keep={files[2]}, grace=600)
    # oldest first: f0 goes, f2 stays (kept), f3 and f4 go; f1 (used within the grace period) stays
    assert [p.exists() for p in files] == [False, True, True, False, False] and freed == 300


def test_s3_store_trims_its_cache(s3_env, tagsift_env):
    tagsift_env(storage_cache_bytes=1000)
    store = get_storage()
    shas = store.put_many([os.urandom(600), os.urandom(600)])
    paths = store.fetch(shas)
    old = time.time() - 3600
    for p in paths:
        os.utime(p, (old, old))
    os.utime(paths[1], (old + 10, old + 10))
    store.trim()
    assert not paths[0].exists() and paths[1].exists()
    assert store.fetch(shas[:1])[0].exists()  # downloaded again on demand


@pytest.mark.parametrize(
    ("url", "endpoint", "setting"),
    [
        ("ftp://host/x", "", "TAGSIFT_STORAGE_URL: unknown scheme ftp://"),
        ("tagsift-bucket", "", "TAGSIFT_STORAGE_URL: unknown scheme (none)"),
        ("s3://No_Such/x", "", "TAGSIFT_STORAGE_URL: 'No_Such'"),
        ("file://", "", "TAGSIFT_STORAGE_URL:"),
        ("s3://bucket/x", "localhost:9000", "TAGSIFT_S3_ENDPOINT_URL:"),
    ],
)
def test_urls_that_name_no_store(url: str, endpoint: str, setting: str, tmp_path: Path):
    settings = Settings(data_dir=tmp_path, storage_url=url, s3_endpoint_url=endpoint)
    with pytest.raises(StorageConfigError) as err:
        open_storage(settings)
    assert str(err.value).startswith(setting), str(err.value)


def test_s3_errors_name_the_setting(s3_server, monkeypatch, tmp_path: Path):
    def store(bucket: str, endpoint: str = s3_server.endpoint) -> S3BlobStore:
        settings = Settings(data_dir=tmp_path, storage_url=f"s3://{bucket}/p", s3_endpoint_url=endpoint)
        return open_storage(settings)

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.new_bucket()
    store(bucket).check()
    with pytest.raises(StorageConfigError, match=r"^TAGSIFT_STORAGE_URL: bucket 'tagsift-none-here' does not exist"):
        store("tagsift-none-here").check()
    with pytest.raises(StorageConfigError, match=r"^TAGSIFT_S3_ENDPOINT_URL: http://127.0.0.1:1 does not answer"):
        store(bucket, "http://127.0.0.1:1").check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageConfigError, match=r"^AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: refused"):
        store(bucket).check()
    # after start-up, a store that does not answer is unavailable (retried by callers), not a bad setting
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    with pytest.raises(StorageUnavailable, match="does not answer"):
        store(bucket, "http://127.0.0.1:1").get("0" * 64)
