"""PiCO, contrastive label disambiguation (Wang et al., ICLR 2022); CoOpPLL `alg_PLL/PiCO.py`."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ml.losses.base import PLLBatch, PLLLoss, uniform_confidence


class PiCOLoss(PLLLoss):
    """L = L_cls + 0.5 · L_cont on a weak view w and a strong view s of each item.

    L_cls  = -(1/B) Σ_i Σ_k c_ik log p^w_ik
    L_cont = SupCon(q, [q; k; queue]) with temperature 0.07, positives = same pseudo-label
             (plain MoCo InfoNCE, positive = own key, in epoch 0), q = g(f^w), k = g_m(f^s)
    pseudo-label   ŷ_i = argmax_k p^w_ik Y_ik;  prototypes μ_ŷ <- normalise(0.9 μ_ŷ + 0.1 q_i)
    confidence     (epoch >= 1) c_i <- φ c_i + (1 - φ) onehot(argmax_k softmax(q_i·μ)_k Y_ik),
                   φ linear 0.95 -> 0.8 over the epochs; queue 1024, dim 128, momentum 0.999.

    Deviation (honest port): the image encoder is frozen, so the query/key encoders are a small projection head
    g (MLP on the cached L2-normalised image features, trained by L_cont) and its momentum copy g_m; L_cont reaches
    only g, never the prompt context. In CoOpPLL the head is never optimised (method.md 3); here it is, so the
    prototype-based confidence updates use a trained embedding. Empty queue slots (label -1) are left out of L_cont
    until filled (PiCO starts from a random queue whose labels are random too: false positives for SupCon). The
    views are two distinct cached views of the item, drawn afresh every epoch among the clean one and the augmented
    ones (RandomResizedCrop + flip; ml.train._epoch_plan), not PiCO's ColorJitter/RandAugment pipelines; with a
    single cached view w = s = view 0.
    """

    n_views = 2

    def __init__(
        self,
        candidates: torch.Tensor,
        *,
        epochs: int,
        feature_dim: int,
        seed: int = 0,  # the job's seed: the head's init and the queue's placeholder keys
        proj_dim: int = 128,  # low-dim embedding of the contrastive head
        queue_size: int = 1024,  # MoCo queue length
        moco_m: float = 0.999,  # momentum of the key head
        proto_m: float = 0.9,  # momentum of the class prototypes
        temperature: float = 0.07,  # SupCon temperature
        cont_weight: float = 0.5,  # weight of L_cont
        phi: tuple[float, float] = (0.95, 0.8),  # confidence EMA φ, linear from first to second over the epochs
        prot_start: int = 1,  # first (0-based) epoch of prototype-based confidence updates and SupCon positives
    ):
        super().__init__(candidates, epochs=epochs, feature_dim=feature_dim, seed=seed)
        k = candidates.shape[1]
        self.queue_size, self.moco_m, self.proto_m = queue_size, moco_m, proto_m
        self.temperature, self.cont_weight, self.phi, self.prot_start = temperature, cont_weight, phi, prot_start
        gen = torch.Generator().manual_seed(int(seed))
        head = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, proj_dim)
        )
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.dim() > 1 else 0.0))
        self.head = head  # query head g: trained by L_cont only
        self.head_k = copy.deepcopy(head).requires_grad_(False)  # momentum key head g_m
        self.register_buffer("confidence", uniform_confidence(candidates))  # (N, K)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim, generator=gen), dim=1))
        # -1 = an empty slot: it holds no key yet and takes no part in the contrastive term (neither as a positive
        # nor in the denominator) until a real key with its pseudo-label is enqueued there
        self.register_buffer("queue_pseudo", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(k, proj_dim))

    def _phi(self) -> float:
        start, end = self.phi
        return start + (end - start) * self.epoch / max(self.epochs, 1)

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        assert batch.features is not None, "PiCO needs the image features of its views"
        f_w = batch.features[0]
        f_s = batch.features[1] if len(batch.features) > 1 else f_w
        z_w = batch.logits[0]
        y = batch.mask
        bsz = z_w.shape[0]

        q = F.normalize(self.head(f_w), dim=1)  # [B, 128]
        with torch.no_grad():
            for pk, pq in zip(self.head_k.parameters(), self.head.parameters(), strict=True):
                pk.mul_(self.moco_m).add_(pq.detach(), alpha=1 - self.moco_m)
            k = F.normalize(self.head_k(f_s), dim=1)  # [B, 128]
            # argmax_k p_k Y_k taken over the candidates' logits: the product underflows to all zeros (argmax 0,
            # maybe not a candidate) when every candidate sits ~104 logits below a non-candidate
            pseudo = z_w.detach().float().masked_fill(y <= 0, float("-inf")).argmax(dim=1)  # [B]
            score_prot = q @ self.prototypes.T  # [B, K]; softmax is monotone: argmax on the scores
            pseudo_prot = score_prot.masked_fill(y <= 0, float("-inf")).argmax(dim=1)
            for feat, label in zip(q.detach(), pseudo, strict=True):
                self.prototypes[label] = self.prototypes[label] * self.proto_m + (1 - self.proto_m) * feat
            self.prototypes.copy_(F.normalize(self.prototypes, dim=1))
            if self.epoch >= self.prot_start:
                phi = self._phi()
                onehot = F.one_hot(pseudo_prot, self.num_classes).float()
                self.confidence[batch.index] = phi * self.confidence[batch.index] + (1 - phi) * onehot

        loss_cls = -(self.confidence[batch.index] * F.log_softmax(z_w, dim=1)).sum(1).mean()

        feats = torch.cat([q, k, self.queue.clone()], dim=0)  # [2B + Q, 128]
        labels = torch.cat([pseudo, pseudo, self.queue_pseudo.clone()], dim=0)
        logits = q @ feats.T / self.temperature  # [B, 2B + Q]
        self_mask = torch.ones_like(logits, dtype=torch.bool)
        self_mask[torch.arange(bsz), torch.arange(bsz)] = False  # no self-contrast
        self_mask[:, 2 * bsz :] &= (labels[2 * bsz :] >= 0).unsqueeze(0)  # empty queue slots are not contrasted
        if self.epoch >= self.prot_start:
            pos = (pseudo.unsqueeze(1) == labels.unsqueeze(0)) & self_mask
        else:
            pos = torch.zeros_like(self_mask)
            pos[torch.arange(bsz), bsz + torch.arange(bsz)] = True  # own key only (MoCo)
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        log_prob = logits - torch.log((logits.exp() * self_mask).sum(1, keepdim=True))
        loss_cont = -((log_prob * pos).sum(1) / pos.sum(1).clamp_min(1)).mean()

        with torch.no_grad():
            self._enqueue(k, pseudo)
        return loss_cls + self.cont_weight * loss_cont

    def _enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        n = keys.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=keys.device) + ptr) % self.queue_size
        self.queue[idx] = keys
        self.queue_pseudo[idx] = labels
        self.queue_ptr.fill_((ptr + n) % self.queue_size)
