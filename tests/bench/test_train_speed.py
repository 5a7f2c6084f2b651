"""bench.train_speed on a tiny random-init backbone: output format, same math in both loops, positive times."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from bench.train_speed import PHASES, run_train_speed, summary_line
from ml.train import TrainConfig
from tests.ml.conftest import CLASSNAMES

SUMMARY = re.compile(r"^speedup=(\d+(?:\.\d+)?) acc_ours=(\d+(?:\.\d+)?) acc_naive=(\d+(?:\.\d+)?)$")


def _jpegs(n: int, seed: int) -> tuple[list[bytes], torch.Tensor]:
    """n small JPEGs whose mean colour depends on the label (so the classes are not all alike)."""
    rng = np.random.default_rng(seed)
    labels = torch.arange(n) % len(CLASSNAMES)
    out = []
    for y in labels.tolist():
        base = np.array([40 * y, 255 - 40 * y, 120], dtype=np.float32)
        px = np.clip(base + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out, labels


def _candidates(labels: torch.Tensor, q: float = 0.4) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(len(labels), len(CLASSNAMES), generator=g) < q
    mask[torch.arange(len(labels)), labels] = True
    return mask


@pytest.mark.parametrize(("kind", "method", "loss"), [("native", "prompt_alignment", "rc"), ("hf", "coop", "cc")])
def test_train_speed_runs_both_loops_with_the_same_math(request, kind, method, loss):
    tiny_backbone = request.getfixturevalue(f"tiny_{kind}")
    train, y = _jpegs(18, seed=0)
    test, y_test = _jpegs(10, seed=1)
    cfg = TrainConfig(method=method, loss=loss, epochs=2, batch_size=8, n_ctx=4, seed=1)
    printed: list[str] = []
    r = run_train_speed(tiny_backbone, train, _candidates(y), CLASSNAMES, test, y_test, config=cfg, out=printed.append)

    assert printed == r.lines and printed[-1] == r.summary
    m = SUMMARY.match(printed[-1])
    assert m, printed[-1]
    speedup, acc_ours, acc_naive = (float(v) for v in m.groups())
    assert speedup > 0 and speedup == pytest.approx(r.speedup, abs=0.01)
    assert abs(acc_ours - acc_naive) <= 1.0, "\n".join(printed)
    assert 0.0 <= acc_ours <= 100.0
    # same math: the learned class features agree (truncation and feature caching are exact up to rounding)
    assert torch.allclose(r.ours.class_features, r.naive.class_features, atol=1e-4)
    for fig in (r.ours, r.naive):
        assert len(fig.epoch_seconds) == 2 and all(t > 0 for t in fig.epoch_seconds)
        assert set(fig.phases) == set(PHASES) and all(v >= 0 for v in fig.phases.values())
        assert fig.phases["text"] > 0 and fig.phases["backward"] > 0 and fig.phases["optimizer"] > 0
    assert r.naive.phases["image"] > 0 and r.ours.phases["image"] == 0 and r.ours.encode_seconds > 0
    assert r.naive.text_tokens >= r.ours.text_tokens
    assert any(line.startswith("accuracy on 10 test images") for line in printed)


def test_summary_line_format():
    assert summary_line(12.345, 80.0, 79.5) == "speedup=12.35 acc_ours=80.00 acc_naive=79.50"


def test_rejects_methods_without_prompts(tiny_native):
    train, y = _jpegs(4, seed=0)
    with pytest.raises(ValueError, match="method"):
        run_train_speed(
            tiny_native, train, _candidates(y), CLASSNAMES, train, y, config=TrainConfig(method="linear_probe")
        )


def test_fit_reuses_the_after_step_text_pass_exactly(tiny_native, monkeypatch):
    """Classifier.class_features reuses RC's after-step text pass for the next step: same result, fewer passes."""
    import ml.prompt_learner as pl
    import ml.train as train_mod

    g = torch.Generator().manual_seed(0)
    n, k = 20, len(CLASSNAMES)
    y = torch.randint(0, k, (n,), generator=g)
    mask = _candidates(y)
    feats = torch.randn(1, n, tiny_native.embed_dim, generator=g)
    cfg = TrainConfig(method="prompt_alignment", loss="rc", epochs=2, batch_size=8, n_ctx=4)
    calls = {"n": 0}
    orig = pl.class_text_features

    def counting(*a, **kw):
        calls["n"] += 1
        return orig(*a, **kw)

    monkeypatch.setattr(pl, "class_text_features", counting)
    fast = train_mod.fit(tiny_native, feats, mask, CLASSNAMES, cfg)
    fast_calls = calls["n"]
    calls["n"] = 0
    monkeypatch.setattr(
        train_mod.Classifier, "class_features", lambda self: counting(self.prompt_learner, self.text_encoder)
    )
    slow = train_mod.fit(tiny_native, feats, mask, CLASSNAMES, cfg)
    steps = 2 * 3  # 2 epochs x 3 batches of 20 items
    assert calls["n"] == 2 * steps + 2 + 1  # loss + after-step per step, one per epoch end, one at the end
    assert fast_calls == steps + 1  # after-step passes reused by the next step and the epoch-end features
    assert torch.equal(fast.class_features, slow.class_features) and torch.equal(fast.labels, slow.labels)
    assert not fast.class_features.requires_grad
