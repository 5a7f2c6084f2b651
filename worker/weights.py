"""``tagsift weights download|install|where``: a backbone's weights into TAGSIFT_MODEL_CACHE_DIR, online or air-gapped.

* ``tagsift weights download ViT-B-32:laion2b_s34b_b79k`` on a machine with internet: open_clip's own downloader
  (Hugging Face hub, else the tag's URL) into ``<cache>/open_clip``; then the backbone is loaded once, so that the
  text tower's files (Hugging Face configs and tokenizers, under ``<cache>/huggingface``) are fetched too. Copy the
  cache folder to the workers, or share it (docs/deploy.md).
* ``tagsift weights install ViT-B-32:laion2b_s34b_b79k /media/usb/open_clip_model.safetensors`` on an air-gapped
  machine: the file must load into that model (open_clip's strict load), then it is copied under
  ``<cache>/installed/`` where ``load_backbone`` finds it, offline.
* ``tagsift weights where BACKBONE``: which local file serves it, or where to get it.

A job whose backbone weights are missing fails with ``weights_missing`` and :func:`weights_remedy`'s message, which
names the command to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ml.weights import WeightsMissing

weights_cli = typer.Typer(
    help="A backbone's weights in TAGSIFT_MODEL_CACHE_DIR: download them (internet) or install a file (air-gapped).",
    no_args_is_help=True,
)


def weights_remedy(exc: WeightsMissing) -> str:
    """The job's error message for missing weights: what is missing and which of the two commands to run."""
    backbone, cache = exc.backbone, exc.cache_dir
    install = f"`tagsift weights install {backbone} <file>`"
    download = f"`tagsift weights download {backbone}`"
    if exc.offline:
        first = (
            f"This worker is offline (TAGSIFT_OFFLINE) and the weights of backbone '{backbone}' are not in its model"
            f" cache {cache}. Run {install} on this machine, with <file> the checkpoint brought on disk (from"
            f" {exc.source})"
        )
        second = f"or run {download} on a machine with internet and copy its TAGSIFT_MODEL_CACHE_DIR here."
    else:
        first = (
            f"The weights of backbone '{backbone}' are not in the model cache {cache} and could not be downloaded"
            f" ({exc.cause}). If this machine has internet, run {download} to see the download's error"
        )
        second = (
            f"if it has none (air-gapped), bring the checkpoint ({exc.source}) on disk and run {install}, and set"
            " TAGSIFT_OFFLINE=true."
        )
    return f"{first}; {second}"


def _spec(backbone: str):
    from ml.spec import parse_backbone
    from ml.weights import has_tag

    try:
        spec = parse_backbone(backbone)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="BACKBONE") from exc
    if not has_tag(spec):
        raise typer.BadParameter(
            f"{backbone!r}: expected '<open_clip model>:<pretrained tag>', e.g. ViT-B-32:laion2b_s34b_b79k"
            " (a checkpoint path or 'reference' needs no download)",
            param_hint="BACKBONE",
        )
    return spec


def _settings():
    from app.config import apply_model_cache_environment, get_settings

    settings = get_settings()
    apply_model_cache_environment(settings)  # before huggingface_hub is imported
    return settings


CacheOption = Annotated[
    Path | None, typer.Option("--cache-dir", help="The model cache (default TAGSIFT_MODEL_CACHE_DIR).")
]


@weights_cli.command("download")
def download(backbone: Annotated[str, typer.Argument(help="'<model>:<tag>'")], cache_dir: CacheOption = None) -> None:
    """Download BACKBONE's weights (and its text tower's files) into the model cache; needs internet."""
    settings = _settings()
    cache = (cache_dir or settings.model_cache_dir).resolve()
    spec = _spec(backbone)
    from ml.backbone import load_backbone
    from ml.errors import BackboneLoadError
    from ml.weights import download as _download

    try:
        path = _download(spec, cache)
        typer.echo(f"weights: {path}")
        backbone_ = load_backbone(spec, device="cpu", cache_dir=cache)  # the text tower's files too; checks it loads
    except (BackboneLoadError, RuntimeError, OSError) as exc:
        typer.echo(f"error: could not download '{backbone}' into {cache}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"backbone {backbone_.id} loads from {cache} (embed dim {backbone_.embed_dim})")


@weights_cli.command("install")
def install(
    backbone: Annotated[str, typer.Argument(help="'<model>:<tag>' the file holds the weights of")],
    file: Annotated[Path, typer.Argument(help="The checkpoint file (.safetensors, .bin or .pt)")],
    cache_dir: CacheOption = None,
) -> None:
    """Install a checkpoint FILE brought on disk as BACKBONE's weights (air-gapped sites); it must load first."""
    settings = _settings()
    cache = (cache_dir or settings.model_cache_dir).resolve()
    spec = _spec(backbone)
    from ml.backbone import load_backbone
    from ml.errors import BackboneLoadError
    from ml.weights import install as _install

    try:
        path = _install(spec, file, cache)
        loaded = load_backbone(spec, device="cpu", cache_dir=cache, offline=True)
    except BackboneLoadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"installed {path}")
    typer.echo(f"backbone {loaded.id} loads offline from {cache} (embed dim {loaded.embed_dim})")


@weights_cli.command("where")
def where(backbone: Annotated[str, typer.Argument(help="'<model>:<tag>'")], cache_dir: CacheOption = None) -> None:
    """Print the local file that serves BACKBONE (exit 0), or where its checkpoint comes from (exit 1)."""
    settings = _settings()
    cache = (cache_dir or settings.model_cache_dir).resolve()
    spec = _spec(backbone)
    from ml.weights import find_local, weight_source

    local = find_local(spec, cache)
    if local is not None:
        typer.echo(str(local))
        return
    source = weight_source(spec)
    typer.echo(f"not in {cache}; checkpoint: {source.describe() if source else '(open_clip knows no such tag)'}")
    raise typer.Exit(1)
