"""The one ``tagsift`` console script: the worker's commands here, the API's from :mod:`app.cli`, and the ``bench``
group from the ``tagsift.commands`` entry points when the benchmarks are installed (not in the Docker images).
Heavy imports (torch, ml) happen inside the commands that need them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from app import cli as app_cli
from worker.weights import weights_cli

cli = typer.Typer(
    help="tagsift: tune CLIP prompts on candidate tag sets and serve the disambiguated tags.",
    no_args_is_help=True,
    add_completion=False,
)
app_cli.register(cli)
cli.add_typer(weights_cli, name="weights")


def _add_plugins() -> None:
    """Command groups that other installed packages register under the ``tagsift.commands`` entry-point group
    (``bench`` from pyproject.toml). Found by name, so worker never imports them; one whose package is not there
    (the Docker images leave ``bench/`` out) is left out of ``--help``."""
    for entry in entry_points(group="tagsift.commands"):
        try:
            group = entry.load()
        except ModuleNotFoundError as exc:
            if exc.name != entry.module.split(".")[0]:
                raise
            continue
        cli.add_typer(group, name=entry.name)


_add_plugins()


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Jobs at once (default TAGSIFT_WORKER_CONCURRENCY).")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
    device: Annotated[
        str | None,
        typer.Option(
            help="cpu or gpu: this worker runs jobs asked for its device and 'auto' ones (TAGSIFT_QUEUE plus"
            " TAGSIFT_CPU_QUEUE or TAGSIFT_GPU_QUEUE), never the other device's. auto: gpu when CUDA is usable."
            " Default: from TAGSIFT_DEVICE (cpu: cpu, cuda[:N]: gpu, auto: auto)."
        ),
    ] = None,
) -> None:
    """Run a Celery worker process on the configured broker and the queues of its device."""
    from app.config import apply_model_cache_environment, get_settings

    settings = get_settings()
    app_cli.require_storage()
    apply_model_cache_environment(settings)  # HF_HOME under TAGSIFT_MODEL_CACHE_DIR, before any ml import

    from worker import runtime
    from worker.celery_app import celery_app

    try:
        kind = runtime.resolve_worker_kind(device, settings.device)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device") from exc
    runtime.set_worker_kind(kind)  # before the pool forks: children inherit it
    queues = settings.worker_queues(kind)
    typer.echo(f"tagsift worker: {kind} worker on queues {', '.join(queues)}", err=True)
    from worker import live

    beside = live.start_beside() if settings.live_refit and settings.live_worker else None
    try:
        _worker_main(celery_app, settings, queues, concurrency, pool)
    finally:
        if beside is not None:
            live.stop(beside)


def _worker_main(celery_app, settings, queues: list[str], concurrency: int | None, pool: str) -> None:
    celery_app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level,
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(concurrency or settings.worker_concurrency),
            "--pool",
            pool,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command("live-worker")
def live_worker() -> None:
    """Consume only the live refit queue (TAGSIFT_LIVE_QUEUE) in one light process (`tagsift worker` starts one)."""
    from app.config import apply_model_cache_environment, get_settings

    app_cli.require_storage()
    apply_model_cache_environment(get_settings())
    from worker import live

    live.run()


@cli.command("worker-health")
def worker_health(
    file: Annotated[
        Path | None, typer.Option("--file", help="The health file (default TAGSIFT_WORKER_HEALTH_FILE).")
    ] = None,
    max_age: Annotated[
        float | None, typer.Option(help="Oldest healthy age in seconds (default 3 x TAGSIFT_WORKER_HEALTH_SECONDS).")
    ] = None,
) -> None:
    """Exit 0 when the worker's health file is fresh and its process alive (the images' HEALTHCHECK), else 1."""
    from app.config import get_settings
    from worker.health import check

    settings = get_settings()
    path = file or settings.worker_health_file
    if path is None:
        typer.echo("unhealthy: no health file: set TAGSIFT_WORKER_HEALTH_FILE (or pass --file)", err=True)
        raise typer.Exit(1)
    ok, why = check(path, max_age=max_age or 3 * settings.worker_health_seconds)
    typer.echo(f"{'healthy' if ok else 'unhealthy'}: {why}", err=not ok)
    if not ok:
        raise typer.Exit(1)


@cli.command()
def up() -> None:
    """The embedded default in one command: migrate, start one worker process, serve the API."""
    from app.config import get_settings
    from app.db import upgrade_database

    settings = get_settings()
    upgrade_database()
    exe = Path(sys.argv[0]).with_name("tagsift")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "worker.cli"]
    worker_proc = subprocess.Popen([*cmd, "worker"], env=os.environ.copy(), preexec_fn=_die_with_parent)
    typer.echo(
        f"tagsift: API on http://{settings.host}:{settings.port} (docs at /docs), worker pid {worker_proc.pid},"
        f" data in {settings.data_dir}"
    )
    # uvicorn restores this handler after its graceful shutdown and re-raises SIGTERM: exit through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app_cli.serve(host=None, port=None, workers=1)
    finally:
        worker_proc.send_signal(signal.SIGTERM)
        try:
            worker_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_proc.kill()


def _die_with_parent() -> None:
    """In the worker child of `tagsift up`: get SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@cli.command("build-reference-backbone")
def build_reference_backbone(
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Where to build it (default TAGSIFT_MODEL_CACHE_DIR).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when a cached build exists.")] = False,
) -> None:
    """Build (or find) the offline reference backbone effnetlite0-minilm and print its paths and fit R^2."""
    import time

    from app.config import get_settings
    from ml.reference import ReferenceBuildError
    from ml.reference import build_reference_backbone as _build

    started = time.perf_counter()
    try:
        build = _build(cache_dir or get_settings().model_cache_dir, force=force)
    except ReferenceBuildError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    state = "built" if build.built else "cached"
    typer.echo(f"reference backbone effnetlite0-minilm ({state}, {time.perf_counter() - started:.1f} s)")
    typer.echo(f"config: {build.config_path}")
    typer.echo(f"checkpoint: {build.checkpoint_path}")
    typer.echo(f"r2: {build.r2:.4f}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
