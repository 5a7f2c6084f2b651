"""The epoch's view plan, PiCO's queue and seed, LWS under extreme logits, the linear probe's BatchNorm statistics
and the fp16 loss scaler: each test failed on the code before its fix (issue 12, item 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml.losses import PLLBatch, build_loss
from ml.losses.lws import LWSLoss
from ml.losses.pico import PiCOLoss
from ml.losses.plcr import PLCRLoss
from ml.losses.rc import RCLoss
from ml.train import TrainConfig, fit
from tests.ml.conftest import CLASSNAMES


def _data(dim: int, n: int = 24, views: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = len(CLASSNAMES)
    y = torch.randint(0, k, (n,), generator=g)
    mask = torch.rand(n, k, generator=g) < 0.35
    mask[torch.arange(n), y] = True
    feats = torch.randn(views, n, dim, generator=g)  # every view of every item is a different vector
    return feats, mask, y


def _record_views(monkeypatch, loss_cls) -> list[PLLBatch]:
    """Keep (a copy of) every batch the loss is called with; the real forward still runs."""
    seen: list[PLLBatch] = []
    original = loss_cls.forward

    def spy(self, batch):
        seen.append(PLLBatch([], batch.mask.clone(), batch.index.clone(), [f.clone() for f in batch.features]))
        seen[-1].seed = self.seed
        return original(self, batch)

    monkeypatch.setattr(loss_cls, "forward", spy)
    return seen


def _view_of(feats: torch.Tensor, batch_feature: torch.Tensor, index: torch.Tensor) -> list[int]:
    """Which cached view (0..V-1) each row of `batch_feature` is."""
    normed = F.normalize(feats.float(), dim=-1)
    return [
        next(v for v in range(feats.shape[0]) if torch.allclose(normed[v, i], row))
        for i, row in zip(index.tolist(), batch_feature, strict=True)
    ]


@pytest.mark.parametrize(("loss", "views", "loss_cls"), [("pico", 2, PiCOLoss), ("plcr", 3, PLCRLoss)])
def test_multi_view_losses_get_distinct_views_including_the_clean_one(tiny_native, monkeypatch, loss, views, loss_cls):
    feats, mask, _ = _data(tiny_native.embed_dim, views=views)
    seen = _record_views(monkeypatch, loss_cls)
    cfg = TrainConfig(method="prompt_alignment", loss=loss, epochs=3, batch_size=8, n_ctx=4, seed=5)
    fit(tiny_native, feats, mask, CLASSNAMES, cfg)
    assert len(seen) == 9  # 3 epochs x 3 steps
    used = set()
    per_item_first_view: dict[int, set[int]] = {}
    for batch in seen:
        assert len(batch.features) == views
        which = [_view_of(feats, f, batch.index) for f in batch.features]  # [view slot][item]
        for row, item in enumerate(batch.index.tolist()):
            item_views = [which[slot][row] for slot in range(views)]
            assert len(set(item_views)) == views, f"item {item} got the same view twice: {item_views}"
            per_item_first_view.setdefault(item, set()).add(item_views[0])
        for slot in range(views):
            assert not torch.equal(batch.features[0], batch.features[slot]) or slot == 0
            used.update(which[slot])
        assert batch.seed == 5  # the loss (PiCO's head and queue) is seeded from the job
    assert used == set(range(views)), "the clean view 0 and every augmented view are used"
    assert any(len(v) > 1 for v in per_item_first_view.values()), "views are drawn afresh each epoch"


def test_one_view_losses_see_the_clean_view_too(tiny_native, monkeypatch):
    feats, mask, _ = _data(tiny_native.embed_dim, views=2)
    seen = _record_views(monkeypatch, RCLoss)
    fit(tiny_native, feats, mask, CLASSNAMES, TrainConfig(method="coop", loss="rc", epochs=2, batch_size=8, n_ctx=4))
    used = [v for batch in seen for v in _view_of(feats, batch.features[0], batch.index)]
    assert 0 < used.count(0) < len(used)  # both the clean and the augmented view


def test_too_few_views_for_a_multi_view_loss_are_refused_and_the_pipeline_encodes_enough(tiny_native):
    from ml.pipeline import encoded_views
    from ml.train import views_needed

    feats, mask, _ = _data(tiny_native.embed_dim, views=2)
    cfg = TrainConfig(loss="plcr", epochs=1, n_ctx=4)
    with pytest.raises(ValueError, match="plcr: needs 3 distinct feature views per item, got 2"):
        fit(tiny_native, feats, mask, CLASSNAMES, cfg)
    assert views_needed(cfg) == 3 and views_needed(TrainConfig(loss="pico")) == 2
    assert views_needed(TrainConfig(loss="rc")) == 1 and views_needed(TrainConfig(method="zero_shot")) == 1
    assert encoded_views(2, cfg) == 3 and encoded_views(2, TrainConfig(loss="pico")) == 2
    assert encoded_views(4, cfg) == 4 and encoded_views(1, cfg) == 1  # 1 = no augmentation, as asked


def test_pico_queue_starts_empty_and_empty_slots_do_not_count():
    k, d, n = len(CLASSNAMES), 16, 8
    mask = torch.ones(n, k, dtype=torch.bool)
    g = torch.Generator().manual_seed(3)
    feats = [F.normalize(torch.randn(n, d, generator=g), dim=1) for _ in range(2)]
    logits = torch.randn(n, k, generator=g)

    def loss_with_queue(queue_seed: int) -> torch.Tensor:
        loss = PiCOLoss(mask, epochs=4, feature_dim=d, seed=1, queue_size=32)
        assert bool((loss.queue_pseudo == -1).all()), "the queue starts with no labels"
        loss.queue.copy_(F.normalize(torch.randn(32, 128, generator=torch.Generator().manual_seed(queue_seed)), dim=1))
        loss.set_epoch(1)  # SupCon positives by pseudo-label
        value = loss(PLLBatch([logits], mask.float(), torch.arange(n), feats))
        assert int((loss.queue_pseudo >= 0).sum()) == n  # the batch's keys filled n slots
        return value

    # the placeholder keys in empty slots take no part: whatever they are, the loss is the same
    assert torch.allclose(loss_with_queue(0), loss_with_queue(1), atol=1e-6)


def test_pico_head_and_queue_follow_the_seed():
    mask = torch.ones(4, 3, dtype=torch.bool)
    a = build_loss("pico", mask, epochs=2, feature_dim=8, seed=1)
    b = build_loss("pico", mask, epochs=2, feature_dim=8, seed=1)
    c = build_loss("pico", mask, epochs=2, feature_dim=8, seed=2)
    wa, wb, wc = (x.head[0].weight for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert torch.equal(a.queue, b.queue) and not torch.equal(a.queue, c.queue)


def test_lws_weights_stay_finite_when_the_candidate_mass_underflows():
    n, k = 4, 5
    mask = torch.zeros(n, k, dtype=torch.bool)
    mask[:, :2] = True
    mask[3] = True  # an item whose every class is a candidate
    loss = LWSLoss(mask, epochs=2, feature_dim=4)
    logits = torch.full((n, k), 1e4)
    logits[:, :2] = -1e4  # softmax mass of the candidates: exactly 0 in float32
    batch = PLLBatch([logits], mask.float(), torch.arange(n))
    loss.after_step(logits, batch)
    w = loss.weight
    assert bool(torch.isfinite(w).all()), w
    assert torch.allclose(w[:3, :2].sum(1), torch.ones(3)) and torch.allclose(w[:3, 2:].sum(1), torch.ones(3))
    assert torch.allclose(w[3].sum(), torch.tensor(1.0))
    value = loss(PLLBatch([logits.requires_grad_()], mask.float(), torch.arange(n)))
    assert torch.isfinite(value)


@pytest.mark.parametrize("loss", ["rc", "lws", "pico"])
def test_linear_probe_batchnorm_statistics_are_updated_once_per_step(tiny_native, tmp_path, loss):
    feats, mask, _ = _data(tiny_native.embed_dim, views=2)
    cfg = TrainConfig(method="linear_probe", loss=loss, epochs=2, batch_size=8, lr=1.0)
    ckpt = tmp_path / "ckpt.pt"
    fit(tiny_native, feats, mask, CLASSNAMES, cfg, checkpoint_path=ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert int(state["learner"]["bn.num_batches_tracked"]) == 2 * 3  # 2 epochs x 3 steps of 8 items


def test_the_step_goes_through_a_grad_scaler(tiny_native, monkeypatch):
    """fp16 autocast needs loss scaling; on the CPU the scaler exists disabled (a pass-through), and every step
    is scale -> backward -> scaler.step -> update (the CUDA path runs the same code with enabled=True)."""
    made: list = []
    calls: list[str] = []
    real = torch.amp.GradScaler

    class Spy(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((args, kwargs))

        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            calls.append("step")
            return super().step(optimizer, *args, **kwargs)

        def update(self, *args, **kwargs):
            calls.append("update")
            return super().update(*args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", Spy)
    feats, mask, _ = _data(tiny_native.embed_dim, views=1)
    cfg = TrainConfig(method="coop", loss="cc", epochs=1, batch_size=8, n_ctx=4, precision="amp")
    r = fit(tiny_native, feats, mask, CLASSNAMES, cfg, device="cpu")
    assert made == [(("cuda",), {"enabled": False})]  # amp asked for, but this is the CPU: fp32, scaler off
    assert calls == ["scale", "step", "update"] * 3
    assert torch.isfinite(r.class_features).all()


@pytest.mark.parametrize(("n", "batch_size"), [(9, 8), (33, 32), (17, 8), (65, 32), (8, 8), (1, 4)])
def test_epoch_plan_covers_every_item_once_without_a_singleton_batch(n: int, batch_size: int) -> None:
    """A last batch of one item joins the one before it: every item exactly once, whatever the batch count (with
    two batches the old code raised IndexError; with three or more it repeated one batch and dropped another)."""
    from ml.train import _epoch_plan

    batches, _ = _epoch_plan(1, 0, n, 1, 1, batch_size)
    seen = torch.cat(batches).tolist()
    assert sorted(seen) == list(range(n))
    assert n == 1 or all(len(b) > 1 for b in batches)
