"""The ``tagsift`` command line. Heavy imports (torch, ml) happen inside the commands that need them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

cli = typer.Typer(
    help="tagsift: tune CLIP prompts on candidate tag sets and serve the disambiguated tags.",
    no_args_is_help=True,
    add_completion=False,
)
bench = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
cli.add_typer(bench, name="bench")


@cli.command()
def migrate(revision: str = "head") -> None:
    """Apply database migrations to the configured database (TAGSIFT_DATABASE_URL)."""
    from app.config import get_settings
    from app.db import upgrade_database

    upgrade_database(revision=revision)
    typer.echo(f"database at {_safe_url(get_settings().database_url)} is at {revision}")


@cli.command("create-api-key")
def create_api_key(owner: Annotated[str, typer.Option("--owner", help="Owner (tenant) name.")]) -> None:
    """Create an API key for OWNER (created if new) and print it; only its hash is stored."""
    from app.db import session_scope
    from app.services.api_keys import create_api_key as _create

    with session_scope() as session:
        key = _create(session=session, owner_name=owner)
    typer.echo(key)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default TAGSIFT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default TAGSIFT_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="API processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn). Applies migrations first when the database is the embedded SQLite."""
    import uvicorn

    from app.config import get_settings
    from app.db import upgrade_database

    settings = get_settings()
    if settings.is_embedded:
        upgrade_database()
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level.lower(),
    )


@cli.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Jobs at once (default TAGSIFT_WORKER_CONCURRENCY).")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo or threads.")] = "prefork",
) -> None:
    """Run a Celery worker process on the configured broker and queue."""
    from app.config import get_settings
    from worker.celery_app import celery_app

    settings = get_settings()
    celery_app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level,
            "--queues",
            settings.queue,
            "--concurrency",
            str(concurrency or settings.worker_concurrency),
            "--pool",
            pool,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command()
def up() -> None:
    """The embedded default in one command: migrate, start one worker process, serve the API."""
    from app.config import get_settings
    from app.db import upgrade_database

    settings = get_settings()
    upgrade_database()
    exe = Path(sys.argv[0]).with_name("tagsift")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "worker.cli"]
    worker_proc = subprocess.Popen([*cmd, "worker"], env=os.environ.copy())
    typer.echo(
        f"tagsift: API on http://{settings.host}:{settings.port} (docs at /docs), worker pid {worker_proc.pid},"
        f" data in {settings.data_dir}"
    )
    try:
        serve(host=None, port=None, workers=1)
    finally:
        worker_proc.send_signal(signal.SIGTERM)
        try:
            worker_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_proc.kill()


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


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
