"""PLL objectives (method.md section 3), one module each, looked up by name."""

from __future__ import annotations

import torch

from ml.losses.base import PLLBatch, PLLLoss
from ml.losses.cavl import CAVLLoss
from ml.losses.cc import CCLoss
from ml.losses.lws import LWSLoss
from ml.losses.naive import NaiveLoss
from ml.losses.pico import PiCOLoss
from ml.losses.plcr import PLCRLoss
from ml.losses.rc import RCLoss
from vocab import LOSS_ALIASES

#: Other names of the same objectives (PRODEN is RC, CRDPLL is PLCR): ml accepts them, the API offers the canonical one
#: (``vocab``, where the API reads the names; tests/test_contracts.py ties this registry to ``vocab.LOSSES``).
ALIASES: dict[str, str] = LOSS_ALIASES

_CANONICAL: dict[str, type[PLLLoss]] = {
    "naive": NaiveLoss,
    "cc": CCLoss,
    "rc": RCLoss,
    "lws": LWSLoss,
    "cavl": CAVLLoss,
    "plcr": PLCRLoss,
    "pico": PiCOLoss,
}
LOSSES: dict[str, type[PLLLoss]] = {**_CANONICAL, **{alias: _CANONICAL[name] for alias, name in ALIASES.items()}}


def build_loss(name: str, candidates: torch.Tensor, *, epochs: int, feature_dim: int, seed: int = 0) -> PLLLoss:
    """Instantiate the PLL objective `name` with state for the (N, K) candidate mask (random init from `seed`)."""
    key = name.lower()
    if key not in LOSSES:
        raise ValueError(f"unknown PLL loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[key](candidates, epochs=epochs, feature_dim=feature_dim, seed=seed)


__all__ = ["LOSSES", "PLLBatch", "PLLLoss", "build_loss"]
