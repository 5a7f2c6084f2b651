"""The truncated prompt-embedding text pass equals open_clip's full-length pass, for both tower kinds."""

from __future__ import annotations

import pytest
import torch

from ml.prompt_learner import PromptLearner, PromptLearnerConfig
from ml.text_encoder import TextEncoder
from tests.ml.conftest import CLASSNAMES


def test_token_path_matches_open_clip_encode_text(tiny_backbone):
    te = TextEncoder(tiny_backbone.model)
    ids = tiny_backbone.tokenizer(["a photo of a cat.", "a dog.", "truck"])
    full = tiny_backbone.model.encode_text(ids).float()
    assert torch.allclose(te.encode_ids(ids), full, atol=1e-5)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_truncation_is_exact(tiny_backbone, position, csc):
    te = TextEncoder(tiny_backbone.model)
    cfg = PromptLearnerConfig(n_ctx=6, class_token_position=position, csc=csc, seed=3)
    pl = PromptLearner(cfg, CLASSNAMES, te, tiny_backbone.tokenizer, torch.device("cpu"))
    with torch.no_grad():
        pl.ctx.normal_(0, 0.5)  # far from init, so every context token matters
    prompts = pl()
    assert prompts.shape[:2] == pl.token_ids.shape
    te.truncate = False
    full = te(prompts, pl.token_ids)  # [K, D] over the whole context length
    te.truncate = True
    short = te(prompts, pl.token_ids)
    assert int(te.real_lengths(pl.token_ids).max()) < pl.token_ids.shape[1]  # it really truncates
    assert (full - short).abs().max() < 1e-5


def test_ctx_init_phrase_reproduces_the_handcrafted_prompt(tiny_backbone):
    """ctx initialised from "a photo of a" gives exactly the text features of "a photo of a {class}."."""
    te = TextEncoder(tiny_backbone.model)
    pl = PromptLearner(
        PromptLearnerConfig(ctx_init="a photo of a"), CLASSNAMES, te, tiny_backbone.tokenizer, torch.device("cpu")
    )
    assert pl.n_ctx == len(tiny_backbone.tokenizer(["a photo of a"])[0].nonzero()) - 2
    learned = te(pl(), pl.token_ids)
    ids = tiny_backbone.tokenizer([f"a photo of a {c}." for c in CLASSNAMES])
    hand = tiny_backbone.model.encode_text(ids).float()
    assert torch.allclose(learned, hand, atol=1e-5)
