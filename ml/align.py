"""Prompt alignment (method.md section 1): a handcrafted-prompt teacher restricted to the candidate set.

Teacher (code version, a = 0):        q_i = normalise(softmax(z̃_i) ⊙ Y_i)                      (detached)
Mixed posterior (paper's abstract):   q_i = normalise(((1 - a_t) softmax(z̃_i) + a_t sg(softmax(z_i))) ⊙ Y_i)
Alignment loss:                       L_align = -(1/B) Σ_i Σ_k q_ik log softmax(z_i)_k
Total:                                L = L_PLL + L_align · sg(L_PLL) / sg(L_align)
z̃ = s·<f, t̃>, z = s·<f, t> with f, t, t̃ all L2-normalised (method.md 6.3: normalised for both prompts).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vocab import MIX_MODES


def mix_alpha(mode: str, alpha: float, epoch: int, epochs: int, trust: float | None = None) -> float:
    """Weight a_t of the learned posterior in the teacher at 0-based `epoch`.

    none -> 0 (CoOpPLL code);  constant -> alpha;  ramp -> alpha · epoch / (epochs - 1), linear from 0 at the first
    epoch to alpha at the last (GUESS of the paper's "dynamic" mixing, method.md 6.1);  trust -> 1 - trust, read
    from the data (``ml.train``: the prior's chance-corrected hit rate on the candidate sets times the share of the
    prior they support, ``ml.prior``), so a prior the candidate sets do not support hands the teacher to the
    learned posterior.
    """
    if mode == "none":
        return 0.0
    if mode == "trust":
        assert trust is not None, "mix 'trust' needs the prior's trust (ml.prior.prior_trust)"
        return float(1.0 - trust)
    if mode == "constant":
        return float(alpha)
    if mode == "ramp":
        return float(alpha) * (epoch / (epochs - 1) if epochs > 1 else 1.0)
    raise ValueError(f"unknown mix mode {mode!r}; expected one of {MIX_MODES}")


@torch.no_grad()
def teacher(
    hand_logits: torch.Tensor, mask: torch.Tensor, learned_logits: torch.Tensor | None = None, alpha: float = 0.0
) -> torch.Tensor:
    """(B, K) candidate-restricted, renormalised target q (no grad).

    Formed in log space and normalised by a softmax over the candidates alone: the product p ⊙ Y underflows to an
    all-zero target when every candidate sits ~104 logits below a non-candidate.
    """
    logp = F.log_softmax(hand_logits.float(), dim=1)
    if alpha > 0:
        assert learned_logits is not None, "a mixed teacher needs the learned logits"
        learned = F.log_softmax(learned_logits.detach().float(), dim=1)
        # log((1 - a) p̃ + a p); a = 1 is the learned posterior alone (log1p(-1) is a domain error)
        logp = learned if alpha >= 1 else torch.logaddexp(logp + math.log1p(-alpha), learned + math.log(alpha))
    return logp.masked_fill(mask <= 0, float("-inf")).softmax(dim=1)


def align_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_align = -(1/B) Σ_i Σ_k q_ik log softmax(z_i)_k."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def combine(pll_loss: torch.Tensor, al_loss: torch.Tensor) -> torch.Tensor:
    """L = L_PLL + L_align · sg(L_PLL) / sg(L_align): the alignment term always carries the PLL loss's value."""
    return pll_loss + al_loss * pll_loss.detach() / al_loss.detach().clamp_min(1e-12)
