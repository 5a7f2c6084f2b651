"""Where a backbone's pretrained weights come from and where they live: everything under one ``cache_dir``.

Layout of ``cache_dir`` (``TAGSIFT_MODEL_CACHE_DIR``; the caller passes it, ml reads no settings):

* ``open_clip/``: open_clip's download cache (its ``cache_dir``): Hugging Face hub repositories in the hub's own
  layout (``models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/<rev>/open_clip_model.safetensors``), plain
  files for the tags that download from a URL.
* ``huggingface/``: ``HF_HOME`` of the worker (set by ``app.config.model_cache_environment``), for what open_clip
  fetches without passing a cache directory (the configs and tokenizers of Hugging Face text towers).
* ``installed/<model>/<tag>/``: a checkpoint file brought on disk to an air-gapped site and installed by
  :func:`install` (``tagsift weights install``), with ``install.json`` (its sha256, where it came from).
* ``effnetlite0-minilm/``: the offline reference backbone (``ml.reference``).

:func:`find_local` answers which local file serves a ``<model>:<tag>`` backbone (installed first, then the download
cache), without any network; ``ml.backbone.load_backbone`` loads from it when it exists and, offline, fails with
:class:`WeightsMissing` when it does not. :func:`download` is the one network path (open_clip's own downloaders).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ml.errors import BackboneLoadError
from ml.files import atomic_path
from ml.spec import BackboneSpec, file_sha256

OPEN_CLIP_DIR = "open_clip"
HF_HOME_DIR = "huggingface"
INSTALLED_DIR = "installed"

#: open_clip's names for a Hugging Face repository's weights (open_clip.constants), safetensors first as it prefers.
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsMissing(BackboneLoadError):
    """A backbone's pretrained weights are not on this machine and cannot (offline) or could not be downloaded.

    ``backbone`` names it as the user wrote it, ``source`` says where the file comes from (a Hugging Face URL or a
    plain URL), ``offline`` whether downloading was off, ``cause`` what the download said (None when offline).
    """

    def __init__(self, backbone: str, *, source: str, cache_dir: Path, offline: bool, cause: str | None = None):
        self.backbone, self.source, self.cache_dir, self.offline, self.cause = (
            backbone,
            source,
            cache_dir,
            offline,
            cause,
        )
        why = "downloading is off (offline)" if offline else f"the download failed: {cause}"
        super().__init__(
            f"the weights of backbone '{backbone}' are not in the model cache {cache_dir} and {why}. Its checkpoint"
            f" file: {source}"
        )


@dataclass(frozen=True)
class WeightSource:
    """Where open_clip downloads a ``<model>:<tag>`` checkpoint from."""

    hf_repo: str | None  # "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    hf_files: tuple[str, ...]  # file names tried in the repository, in open_clip's order
    url: str | None  # a plain URL (tags without a hub copy)

    def describe(self) -> str:
        if self.hf_repo:
            return " or ".join(f"https://huggingface.co/{self.hf_repo}/resolve/main/{f}" for f in self.hf_files)
        return self.url or "(unknown)"


def open_clip_cache(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / OPEN_CLIP_DIR


def hf_home(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / HF_HOME_DIR


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def installed_dir(cache_dir: str | Path, spec: BackboneSpec) -> Path:
    return Path(cache_dir) / INSTALLED_DIR / _slug(spec.model_name) / _slug(spec.pretrained or "")


def has_tag(spec: BackboneSpec) -> bool:
    """True for ``<open_clip model>:<pretrained tag>``: the backbones whose weights are downloaded or installed."""
    return spec.pretrained is not None and not spec.is_local_checkpoint and spec.config_path is None


def pretrained_cfg(spec: BackboneSpec) -> dict:
    """open_clip's pretrained config of a tag (empty when open_clip does not know it)."""
    import open_clip

    return open_clip.get_pretrained_cfg(spec.model_name.replace("/", "-"), spec.pretrained) or {}


def weight_source(spec: BackboneSpec) -> WeightSource | None:
    """Where the tag's checkpoint comes from (as open_clip's ``download_pretrained`` chooses), None when unknown."""
    cfg = pretrained_cfg(spec)
    if cfg.get("hf_hub"):
        repo, filename = cfg["hf_hub"].rstrip("/"), ""
        if not cfg["hf_hub"].endswith("/"):
            repo, filename = cfg["hf_hub"].rsplit("/", 1)
        if not filename:
            files = HF_WEIGHT_FILES
        elif filename.endswith((".bin", ".pth")):
            files = (filename[:-4] + ".safetensors", filename)
        else:
            files = (filename,)
        return WeightSource(hf_repo=repo, hf_files=files, url=None)
    if cfg.get("url"):
        return WeightSource(hf_repo=None, hf_files=(), url=cfg["url"])
    return None


def find_local(spec: BackboneSpec, cache_dir: str | Path) -> Path | None:
    """The local checkpoint file of a ``<model>:<tag>`` backbone, never touching the network: the installed one,
    else open_clip's download cache; None when neither holds it."""
    installed = installed_dir(cache_dir, spec)
    manifest = installed / "install.json"
    if manifest.is_file():
        path = installed / json.loads(manifest.read_text())["file"]
        if path.is_file():
            return path
    source = weight_source(spec)
    if source is None:
        return None
    if source.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in source.hf_files:
            found = try_to_load_from_cache(source.hf_repo, filename, cache_dir=str(open_clip_cache(cache_dir)))
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        return None
    path = open_clip_cache(cache_dir) / Path(source.url or "").name
    return path if path.is_file() else None


def preprocess_kwargs(spec: BackboneSpec) -> dict:
    """The tag's preprocessing as ``create_model_and_transforms`` keywords: open_clip applies a tag's own mean, std,
    interpolation and resize mode only when loading by tag, not from a file path."""
    cfg = pretrained_cfg(spec)
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    keys["resize_mode"] = "image_resize_mode"
    return {arg: cfg[k] for k, arg in keys.items() if cfg.get(k) is not None}


def download(spec: BackboneSpec, cache_dir: str | Path) -> Path:
    """Download the tag's checkpoint into ``<cache_dir>/open_clip`` with open_clip's own downloader (Hugging Face hub
    first, as open_clip prefers, else the tag's URL with its sha256 check); returns the file. Needs the network."""
    import open_clip

    cfg = pretrained_cfg(spec)
    if not cfg:
        raise BackboneLoadError(
            f"'{spec}': open_clip knows no pretrained tag '{spec.pretrained}' for model '{spec.model_name}'"
        )
    path = open_clip.download_pretrained(cfg, cache_dir=str(open_clip_cache(cache_dir)))
    if not path or not Path(path).is_file():
        raise BackboneLoadError(f"'{spec}': open_clip's download returned no file ({path!r})")
    return Path(path)


def install(spec: BackboneSpec, file: str | Path, cache_dir: str | Path) -> Path:
    """Install a checkpoint file brought on disk as the weights of ``<model>:<tag>``: it must load into the model's
    architecture (open_clip's strict load), then it is copied (atomically) under ``installed/`` with its sha256.
    Returns the installed file. Raises :class:`BackboneLoadError` naming the problem otherwise."""
    import open_clip
    import torch

    file = Path(file).expanduser().resolve()
    if not has_tag(spec):
        raise BackboneLoadError(
            f"'{spec}': install takes '<open_clip model>:<pretrained tag>' (e.g. ViT-B-32:laion2b_s34b_b79k); a"
            " checkpoint path can be used as the backbone directly"
        )
    if not pretrained_cfg(spec):
        tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
        raise BackboneLoadError(f"'{spec}': open_clip knows no tag '{spec.pretrained}' for this model; tags: {tags}")
    if not file.is_file():
        raise BackboneLoadError(f"checkpoint {file} does not exist or is not a file")
    try:
        with torch.random.fork_rng(devices=[]):
            open_clip.create_model_and_transforms(
                spec.model_name, pretrained=str(file), device="cpu", **preprocess_kwargs(spec)
            )
    except Exception as exc:
        raise BackboneLoadError(
            f"{file} does not load as the weights of '{spec}': {type(exc).__name__}: {str(exc)[:500]}"
        ) from exc
    folder = installed_dir(cache_dir, spec)
    target = folder / file.name
    with atomic_path(target) as tmp:
        shutil.copyfile(file, tmp)
    manifest = {
        "backbone": str(spec),
        "file": target.name,
        "sha256": file_sha256(target),
        "source_file": str(file),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_path(folder / "install.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return target
