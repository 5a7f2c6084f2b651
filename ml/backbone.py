"""Frozen open_clip backbones: naming (`BackboneSpec`), parsing, loading.

A backbone is an open_clip model name plus one of: a pretrained tag (downloads where a network exists), a local
checkpoint path, or a model config JSON registered with `open_clip.add_model_config`. Every parameter is frozen;
only `ml.prompt_learner` / `ml.linear_probe` own trainable parameters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch

import vocab
from ml import weights
from ml.errors import BackboneLoadError
from ml.reference import reference_spec
from ml.spec import BackboneSpec, file_sha256, parse_backbone

__all__ = [
    "Backbone",
    "BackboneLoadError",
    "BackboneSpec",
    "PreprocessConfig",
    "file_sha256",
    "load_backbone",
    "parse_backbone",
]


#: The fixed part of ``preprocess.json``: the eval preprocessing of ``ml.features`` in words (``vocab``, where the
#: API's ``app.imaging`` reads it too).
PREPROCESS_STEPS = vocab.PREPROCESS_STEPS


@dataclass(frozen=True)
class PreprocessConfig:
    """What the deployed classifier needs to reproduce the eval transform."""

    image_size: int  # e.g. 224: side of the square centre crop fed to the image encoder
    mean: tuple[float, float, float]  # per-channel mean subtracted after scaling pixels to [0, 1]
    std: tuple[float, float, float]  # per-channel std divided after the mean
    interpolation: str = "bicubic"  # PIL filter name used by the resize
    resize_mode: str = "shortest"  # resize the shortest side to image_size, then center-crop image_size

    def to_dict(self) -> dict:
        """``preprocess.json``: the parameters and every step in words (the API reads the same, see
        ``app.imaging.PREPROCESS_STEPS``: both are ``vocab.PREPROCESS_STEPS``)."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            **PREPROCESS_STEPS,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            interpolation=str(d.get("interpolation", "bicubic")),
            resize_mode=str(d.get("resize_mode", "shortest")),
        )


@dataclass
class Backbone:
    spec: BackboneSpec
    id: str  # == spec.id, computed once
    model: torch.nn.Module  # the open_clip model, eval mode, every parameter requires_grad=False
    tokenizer: Callable  # open_clip tokenizer: list[str] -> (B, context_length) long
    preprocess: Callable  # PIL.Image -> (3, H, W) tensor, the eval transform
    preprocess_cfg: PreprocessConfig
    device: torch.device
    embed_dim: int  # dimension D of image and text features
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. reference-build facts)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed pixels -> (B, D) unnormalised image features."""
        return self.model.encode_image(pixels.to(self.device)).float()


def _local_hint(spec: BackboneSpec) -> str:
    return (
        f"To use a local checkpoint instead, name the backbone "
        f"'{spec.model_name}:/path/to/open_clip_model.safetensors' "
        f"(or '/path/to/model-config.json:/path/to/checkpoint.pt' for a custom architecture)."
    )


def _preprocess_cfg(model: torch.nn.Module) -> PreprocessConfig:
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        assert size[0] == size[1], f"only square inputs are supported, got {size}"
        size = size[0]
    mode = cfg.get("resize_mode", "shortest")
    assert mode == "shortest", f"resize_mode {mode!r} is not supported by the exported preprocessing"
    return PreprocessConfig(
        image_size=int(size),
        mean=tuple(float(x) for x in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(x) for x in cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_mode=mode,
    )


def _checkpoint_preprocess(spec: BackboneSpec) -> dict:
    """Preprocessing stored next to a local checkpoint in open_clip's local-dir `open_clip_config.json`.

    open_clip applies a registered config's own preprocessing only for pretrained tags; with a checkpoint *path*
    it falls back to the OpenAI mean/std, so the `preprocess_cfg` saved beside the checkpoint is passed explicitly.
    """
    if not spec.is_local_checkpoint:
        return {}
    side = Path(spec.pretrained).parent / "open_clip_config.json"
    if not side.is_file():
        return {}
    pp = json.loads(side.read_text()).get("preprocess_cfg", {})
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    keys["resize_mode"] = "image_resize_mode"
    return {arg: tuple(pp[k]) if isinstance(pp[k], list) else pp[k] for k, arg in keys.items() if k in pp}


def load_backbone(
    spec: BackboneSpec | str,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    offline: bool = False,
) -> Backbone:
    """Build a frozen open_clip model, its tokenizer and eval transform.

    "reference" resolves through `ml.reference.reference_spec(cache_dir)` (built if missing). A random-init
    model (no pretrained) is created under a fixed seed so its id is a valid cache key.

    Weights of a ``<model>:<tag>`` backbone (``ml.weights``): an installed checkpoint or one in the download cache
    under ``cache_dir`` is loaded from disk; otherwise open_clip downloads it into ``<cache_dir>/open_clip``, unless
    ``offline``, which raises :class:`ml.weights.WeightsMissing` at once (as does a download that fails).
    """
    if isinstance(spec, str):
        if spec.strip() == "reference":
            if cache_dir is None:
                raise BackboneLoadError("backbone 'reference': cache_dir is required to build or find it")
            spec = reference_spec(cache_dir)
        else:
            spec = parse_backbone(spec)
    device = torch.device(device)
    pretrained, extra = spec.pretrained, _checkpoint_preprocess(spec)
    local = None
    if weights.has_tag(spec) and cache_dir is not None:
        local = weights.find_local(spec, cache_dir)
        if local is not None:  # the tag's file on disk: loaded as a path, with the tag's own preprocessing
            pretrained, extra = str(local), weights.preprocess_kwargs(spec)
        elif offline and (source := weights.weight_source(spec)) is not None:
            raise weights.WeightsMissing(str(spec), source=source.describe(), cache_dir=Path(cache_dir), offline=True)
    download_dir = str(weights.open_clip_cache(cache_dir)) if cache_dir is not None else None
    try:
        if spec.config_path is not None:
            cfg_path = Path(spec.config_path)
            if not cfg_path.is_file():
                raise FileNotFoundError(f"model config JSON {cfg_path} does not exist")
            json.loads(cfg_path.read_text())  # fail early with a clear error on malformed JSON
            open_clip.add_model_config(cfg_path)
        if spec.is_local_checkpoint and not Path(spec.pretrained).is_file():
            raise FileNotFoundError(f"checkpoint {spec.pretrained} does not exist")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random-init towers are reproducible (their id says "random")
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model_name, pretrained=pretrained, device=device, cache_dir=download_dir, **extra
            )
        tokenizer = open_clip.get_tokenizer(spec.model_name, cache_dir=download_dir)
    except Exception as e:  # rewrapped with the backbone name, the cause and a remedy
        source = weights.weight_source(spec) if weights.has_tag(spec) and local is None else None
        if source is not None and cache_dir is not None and "Failed to download" in str(e):
            raise weights.WeightsMissing(
                str(spec), source=source.describe(), cache_dir=Path(cache_dir), offline=offline, cause=str(e)[:500]
            ) from e
        raise BackboneLoadError(
            f"could not load backbone '{spec}': {type(e).__name__}: {e}. {_local_hint(spec)}"
        ) from e
    model.eval()
    model.requires_grad_(False)
    embed_dim = _embed_dim(model)
    return Backbone(
        spec=spec,
        id=spec.id,
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        preprocess_cfg=_preprocess_cfg(model),
        device=device,
        embed_dim=embed_dim,
    )


def _embed_dim(model: torch.nn.Module) -> int:
    """Output dimension of the image tower (== text tower), measured rather than guessed from the config."""
    size = open_clip.get_model_preprocess_cfg(model).get("size", 224)
    size = size if isinstance(size, int) else size[0]
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.encode_image(torch.zeros(1, 3, size, size, device=device))
    return int(out.shape[-1])
