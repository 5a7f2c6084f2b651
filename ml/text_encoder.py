"""Feed prompt *embeddings* (not token ids) through a frozen open_clip text tower.

Two tower kinds are supported, read from the open_clip model without patching it:

* native: `open_clip.CLIP` (tower split into attributes on the model) or `CustomTextCLIP.text` being a
  `TextTransformer`. With a causal mask the pooled EOT feature depends only on positions <= EOT, so the pass is
  truncated after the longest EOT position in the batch of prompts: exact, and much cheaper than 77 tokens.
* hf: `CustomTextCLIP.text` being an `HFTextEncoder` (bidirectional, padding masked by the attention mask). The
  pass is truncated after the longest real (non-pad) length; masked padding never influences real positions or
  the (masked) pooler, so this too is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.hf_model import HFTextEncoder
from open_clip.transformer import TextTransformer, text_global_pool
from torch import nn


class TextEncoder(nn.Module):
    """Frozen text tower that accepts (P, L, d) prompt embeddings plus their (P, L) token ids."""

    def __init__(self, clip_model: nn.Module, *, truncate: bool = True):
        super().__init__()
        text = getattr(clip_model, "text", None)
        self.truncate = truncate  # cut the sequence after the longest real / EOT position (exact, see module doc)
        if isinstance(text, HFTextEncoder):
            self.kind = "hf"
            self.hf = text
            self.pad_id = int(text.config.pad_token_id or 0)
        elif isinstance(text, TextTransformer) or hasattr(clip_model, "token_embedding"):
            self.kind = "native"
            src = text if isinstance(text, TextTransformer) else clip_model
            assert getattr(src, "cls_emb", None) is None, "CoCa-style appended CLS text towers are not supported"
            self.token_embedding = src.token_embedding
            self.positional_embedding = src.positional_embedding
            self.transformer = src.transformer
            self.ln_final = src.ln_final
            self.text_projection = src.text_projection
            self.register_buffer("attn_mask", src.attn_mask, persistent=False)
            self.pool_type = src.pool_type if isinstance(text, TextTransformer) else src.text_pool_type
            self.eos_id = getattr(src, "eos_id", None) if text is not None else getattr(src, "text_eos_id", None)
            self.pad_id = int(getattr(src, "pad_id", 0))
            self.use_pad_mask = bool(getattr(src, "use_pad_mask", False))
            causal = self.attn_mask is not None
            # truncation is exact only if nothing after the pooled token can influence it
            self.can_truncate = (causal or self.use_pad_mask) and self.pool_type in ("argmax", "eos", "first")
        else:
            raise TypeError(f"unsupported text tower {type(text or clip_model).__name__}")
        if self.kind == "hf":
            self.can_truncate = True
        self.requires_grad_(False)

    # --- token ids -> embeddings -------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(P, L) token ids -> (P, L, d) input token embeddings (before position embeddings)."""
        if self.kind == "hf":
            return self.hf.transformer.get_input_embeddings()(ids)
        return self.token_embedding(ids)

    @property
    def width(self) -> int:
        """d: the token-embedding width the prompt learner's context vectors live in."""
        if self.kind == "hf":
            return int(self.hf.transformer.get_input_embeddings().weight.shape[1])
        return int(self.token_embedding.weight.shape[1])

    def real_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """(P,) number of positions that matter: EOT index + 1 (native) or non-pad count (hf)."""
        if self.kind == "native" and self.pool_type == "argmax":
            return ids.argmax(dim=-1) + 1
        if self.kind == "native" and self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1) + 1
        return (ids != self.pad_id).sum(dim=-1)

    # --- forward -------------------------------------------------------------------------------------------
    def forward(self, embeds: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(P, L, d) prompt embeddings + (P, L) token ids -> (P, D) unnormalised text features."""
        assert embeds.shape[:2] == ids.shape, f"embeds {tuple(embeds.shape)} do not match ids {tuple(ids.shape)}"
        if self.truncate and self.can_truncate:
            n = int(self.real_lengths(ids).max())
            embeds, ids = embeds[:, :n], ids[:, :n]  # [P, n, d], [P, n]
        if self.kind == "hf":
            return self._forward_hf(embeds, ids)
        return self._forward_native(embeds, ids)

    def _forward_native(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        cast_dtype = self.transformer.get_cast_dtype()
        seq_len = x.shape[1]
        x = x.to(cast_dtype) + self.positional_embedding[:seq_len].to(cast_dtype)  # [P, L, d]
        attn_mask = None if self.attn_mask is None else self.attn_mask[:seq_len, :seq_len]
        if self.use_pad_mask:
            heads = self.transformer.resblocks[0].attn.num_heads
            keep = (ids != self.pad_id).unsqueeze(1).expand(-1, seq_len, -1)  # [P, Q, K]
            add = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
            add = add.repeat_interleave(heads, 0)  # [P*heads, Q, K]
            attn_mask = add if attn_mask is None else attn_mask.unsqueeze(0) + add
        x = self.transformer(x, attn_mask=attn_mask)  # [P, L, d]
        x = self.ln_final(x)
        pooled = text_global_pool(x, ids, pool_type=self.pool_type, eos_token_id=self.eos_id)  # [P, d]
        if self.text_projection is not None:
            if isinstance(self.text_projection, nn.Linear):
                pooled = self.text_projection(pooled)
            else:
                pooled = pooled @ self.text_projection
        return pooled.float()

    def _forward_hf(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        attn = (ids != self.pad_id).long()  # [P, L]
        out = self.hf.transformer(inputs_embeds=x, attention_mask=attn)
        pooled = self.hf.pooler(out, attn)  # mean / max / CLS pooling over real positions, as HFTextEncoder does
        return self.hf.proj(pooled).float()

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(P, L) token ids -> (P, D) unnormalised features through the same (truncated) path."""
        return self.forward(self.embed_tokens(ids), ids)


@torch.no_grad()
def encode_texts(clip_model: nn.Module, tokenizer, texts: list[str], device: torch.device) -> torch.Tensor:
    """Plain open_clip text features for strings, L2-normalised: (len(texts), D)."""
    ids = tokenizer(texts).to(device)
    return F.normalize(clip_model.encode_text(ids).float(), dim=-1)
