"""ONNX Runtime encoding (ml.ort_encoder) against torch on real photos, and JPEG draft decoding (ml.features) against
full decoding on large photos, both with the reference backbone."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.data import load_cifar10
from ml import features
from ml.export import tower_address
from ml.features import FeatureCache, encode_images
from ml.ort_encoder import OrtImageEncoder, ort_encoder, session, tower_onnx

#: Per image and view, between torch's and ONNX Runtime's features (float32 graph vs eager kernels).
MIN_COSINE = 0.9999
#: Mean absolute difference of preprocessed pixels (normalised units) between draft and full decoding.
MAX_PIXEL_MEAN_ABS = 0.02


@pytest.fixture(scope="module")
def photos(cifar10_archive):
    return load_cifar10(cifar10_archive, "test", per_class=2, seed=0)  # 20 real 32x32 JPEGs


@pytest.fixture(scope="module")
def encoder(reference_backbone, tmp_path_factory):
    return ort_encoder(reference_backbone, tmp_path_factory.mktemp("models"))


def test_onnxruntime_features_match_torch_for_eval_and_augmented_views(reference_backbone, encoder, photos):
    views = 3
    ref = encode_images(reference_backbone, photos.images, views=views, batch_size=8, seed=3)
    got = encode_images(encoder, photos.images, views=views, batch_size=8, seed=3, decode_workers=1)
    assert got.shape == ref.shape == (views, len(photos), reference_backbone.embed_dim)
    cos = F.cosine_similarity(ref, got, dim=-1)  # (views, N)
    assert cos.min().item() >= MIN_COSINE, cos.min().item()
    assert torch.allclose(got.norm(dim=-1), torch.ones(views, len(photos)), atol=1e-4)  # the tower's: unit length
    # the views differ (augmentation happened), so the agreement is not one image's features repeated
    assert F.cosine_similarity(got[0], got[1], dim=-1).min().item() < 0.999


def test_the_tower_is_exported_once_and_kept_by_its_address(reference_backbone, encoder, tmp_path):
    path = encoder.onnx_path
    assert path.parent.name == tower_address(reference_backbone) and path.is_file()
    before = path.stat().st_mtime_ns
    assert tower_onnx(reference_backbone, path.parents[2]) == path and path.stat().st_mtime_ns == before
    assert session(path) is encoder.session  # one session per file per process
    # a caller's copy (the worker's store) is used instead of exporting
    calls = []

    def fetch(address, target):
        calls.append(address)
        target.write_bytes(path.read_bytes())
        return True

    copied = tower_onnx(reference_backbone, tmp_path, fetch)
    assert calls == [tower_address(reference_backbone)] and copied.read_bytes() == path.read_bytes()
    assert not (copied.parent / "tower.json").exists()  # not exported here
    wrapped = OrtImageEncoder(reference_backbone, copied)
    assert wrapped.id == reference_backbone.id and wrapped.preprocess_cfg == reference_backbone.preprocess_cfg


def test_a_cache_filled_by_torch_serves_onnxruntime_within_tolerance(reference_backbone, encoder, photos, tmp_path):
    """The cache keys are kept: a feature is the same direction whichever encoder wrote it (see architecture.md)."""
    cache = FeatureCache(tmp_path)
    images = photos.images[:4]
    torch_feats = encode_images(reference_backbone, images, views=2, cache=cache, seed=1)
    from_cache = encode_images(encoder, images, views=2, cache=cache, seed=1)
    assert torch.equal(from_cache, torch_feats)
    fresh = encode_images(encoder, images, views=2, seed=1)
    assert F.cosine_similarity(fresh, from_cache, dim=-1).min().item() >= MIN_COSINE


def _large_jpeg(data: bytes, size=(4000, 3000)) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _view(backbone, data: bytes, view: int, draft: bool) -> torch.Tensor:
    decoded = features._decode(data, backbone.preprocess_cfg.image_size if draft else None, view > 0)
    return features._view_pixels(backbone, decoded, features.sha256_bytes(data), view, seed=5)


def test_draft_decoding_of_large_photos_stays_close_to_full_decoding(reference_backbone, photos):
    s = reference_backbone.preprocess_cfg.image_size
    for data in (_large_jpeg(photos.images[0]), _large_jpeg(photos.images[7], (3000, 4000))):
        eval_img, full = features._decode(data, s, augmented=False)
        aug_img, _ = features._decode(data, s, augmented=True)
        assert full in ((4000, 3000), (3000, 4000))
        assert min(eval_img.size) >= s and eval_img.size[0] <= full[0] // 8 + 1  # 1/8 scale: 500x375
        assert aug_img.size[0] <= full[0] // 2 + 1  # the smallest crop (short side 849 px) allows 1/2
        for view in (0, 1, 2, 3):
            drafted, whole = _view(reference_backbone, data, view, True), _view(reference_backbone, data, view, False)
            diff = (drafted - whole).abs().mean().item()
            assert diff < MAX_PIXEL_MEAN_ABS, (view, diff)


def test_small_images_are_decoded_exactly_as_before(reference_backbone, photos):
    for data in photos.images[:3]:  # 32x32: no JPEG scale keeps 224 px, so the draft is never asked for
        assert features.draft_size((32, 32), reference_backbone.preprocess_cfg.image_size, True) is None
        for view in (0, 1):
            drafted, whole = _view(reference_backbone, data, view, True), _view(reference_backbone, data, view, False)
            assert torch.equal(drafted, whole)
    # the bounds: eval keeps the short side >= S; augmented keeps the smallest crop's short side >= S
    assert features.draft_size((4000, 3000), 224, False) == (299, 224)
    w, h = features.draft_size((4000, 3000), 224, True)
    assert (0.06 * 4000 * 3000) ** 0.5 * w / 4000 >= 224 - 1e-6


def test_the_worker_picks_its_encoder_and_reuses_the_stored_tower(reference_backbone, encoder, tmp_path):
    from app.storage import LocalBlobStore
    from worker.model_store import store_tower, stored_tower
    from worker.runtime import image_encoder

    models = encoder.onnx_path.parents[2]  # the fixture's model cache: the tower is exported there already
    assert image_encoder(reference_backbone, "torch", models) is reference_backbone
    auto = image_encoder(reference_backbone, "auto", models)  # a CPU backbone, onnxruntime installed
    assert isinstance(auto, OrtImageEncoder) and auto.onnx_path == encoder.onnx_path and auto.engine == "onnxruntime"

    storage = LocalBlobStore(tmp_path / "store")
    store_tower(storage, reference_backbone, encoder.onnx_path.parent)  # the files are there: stored, not exported
    address = tower_address(reference_backbone)
    assert stored_tower(storage, address) is not None
    other = image_encoder(reference_backbone, "onnxruntime", tmp_path / "worker-2", storage)  # another worker
    assert other.onnx_path.read_bytes() == encoder.onnx_path.read_bytes()
    assert not (other.onnx_path.parent / "tower.json").exists()  # copied from the store, not exported again
    pixels = torch.randn(2, 3, 224, 224)
    assert torch.equal(other.encode_image(pixels), encoder.encode_image(pixels))
