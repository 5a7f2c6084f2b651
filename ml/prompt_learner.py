"""CoOp prompt learner: learnable context vectors around frozen class-name token embeddings.

Prompt for class k (position "end"): [SOS] ctx_1 ... ctx_M <classname_k> . [EOS] (padding)
"middle" splits the context in two halves around the class name, "front" puts the name first.
Only `ctx` is a parameter (and the only entry of `state_dict()`): the token buffers are rebuilt from the class
names, so a saved learner holds just the context (CoOp drops `token_prefix` / `token_suffix` the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ml.prompts import clean_classname
from ml.text_encoder import TextEncoder

_PLACEHOLDER = "X"


@dataclass
class PromptLearnerConfig:
    n_ctx: int = 16  # number M of learnable context tokens (ignored when ctx_init is given: its token count)
    ctx_init: str = ""  # "" -> N(0, 0.02^2) init; else a phrase whose token embeddings initialise the context
    class_token_position: str = "end"  # "end" | "middle" | "front": where the class name sits in the prompt
    csc: bool = False  # class-specific context (K x M x d) instead of one shared context (M x d)
    seed: int = 1  # seed of the random context initialisation


class PromptLearner(nn.Module):
    def __init__(
        self,
        cfg: PromptLearnerConfig,
        classnames: Sequence[str],
        text_encoder: TextEncoder,
        tokenizer,
        device: torch.device,
    ):
        super().__init__()
        assert cfg.class_token_position in ("end", "middle", "front"), (
            f"class_token_position must be end|middle|front, got {cfg.class_token_position!r}"
        )
        self.cfg = cfg
        self.n_cls = len(classnames)
        self.class_token_position = cfg.class_token_position
        embed = text_encoder.embed_tokens
        width = text_encoder.width

        def real_len(ids: torch.Tensor) -> torch.Tensor:
            return text_encoder.real_lengths(ids)

        with torch.no_grad():
            if cfg.ctx_init.strip():
                phrase = cfg.ctx_init.strip().replace("_", " ")
                ids = tokenizer([phrase]).to(device)  # [1, L]
                n_ctx = int(real_len(ids)[0]) - 2  # minus SOS/CLS and EOT/SEP
                assert n_ctx >= 1, f"ctx_init {cfg.ctx_init!r} has no tokens"
                ctx = embed(ids)[0, 1 : 1 + n_ctx].float().clone()  # [M, d]
                if cfg.csc:
                    ctx = ctx.unsqueeze(0).repeat(self.n_cls, 1, 1)  # [K, M, d]
            else:
                n_ctx = cfg.n_ctx
                assert n_ctx >= 1, f"n_ctx must be >= 1, got {n_ctx}"
                gen = torch.Generator().manual_seed(cfg.seed)
                shape = (self.n_cls, n_ctx, width) if cfg.csc else (n_ctx, width)
                ctx = torch.randn(shape, generator=gen) * 0.02  # N(0, 0.02^2)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.to(device))  # to be optimized

        names = [clean_classname(c) for c in classnames]
        placeholder = " ".join([_PLACEHOLDER] * n_ctx)
        ids = tokenizer([f"{placeholder} {n}." for n in names]).to(device)  # [K, L]
        x_id = tokenizer([_PLACEHOLDER]).to(device)[0, 1]
        assert bool((ids[:, 1 : 1 + n_ctx] == x_id).all()), (
            "the tokenizer did not map the context placeholders to positions 1..n_ctx (unsupported tokenizer)"
        )
        lengths = real_len(ids)
        name_lens = [int(real_len(tokenizer([n]).to(device))[0]) - 2 for n in names]
        too_long = [n for n, length in zip(names, lengths.tolist(), strict=True) if length >= ids.shape[1]]
        assert not too_long, f"prompts for {too_long[:3]} exceed the text context length {ids.shape[1]}"

        with torch.no_grad():
            emb = embed(ids).float()  # [K, L, d]
        self.register_buffer("token_ids", ids, persistent=False)  # [K, L] for pooling / masks
        self.register_buffer("token_prefix", emb[:, :1, :].clone(), persistent=False)  # SOS / CLS
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :, :].clone(), persistent=False)  # CLS, ., EOS, pad
        self.name_lens = name_lens

    def _ctx_per_class(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)  # [K, M, d]
        return ctx

    def forward(self) -> torch.Tensor:
        """(K, L, d) prompt embeddings; pair with `self.token_ids` for the text encoder."""
        ctx = self._ctx_per_class()
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_token_position == "end":
            return torch.cat(
                [
                    prefix,  # (K, 1, d)
                    ctx,  # (K, M, d)
                    suffix,  # (K, *, d)
                ],
                dim=1,
            )
        half = self.n_ctx // 2
        prompts = []
        for k in range(self.n_cls):
            n = self.name_lens[k]
            name = suffix[k : k + 1, :n]  # (1, n, d)
            rest = suffix[k : k + 1, n:]  # (1, *, d)
            c = ctx[k : k + 1]  # (1, M, d)
            if self.class_token_position == "middle":
                parts = [prefix[k : k + 1], c[:, :half], name, c[:, half:], rest]
            else:  # front
                parts = [prefix[k : k + 1], name, c, rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)  # [K, L, d]


def class_text_features(learner: PromptLearner, text_encoder: TextEncoder) -> torch.Tensor:
    """(K, D) L2-normalised learned class features t_k = h(prompt_k) / ||h(prompt_k)||."""
    return F.normalize(text_encoder(learner(), learner.token_ids), dim=-1)
