"""The API's commands (``tagsift serve``, ``migrate``, ``create-api-key``), registered on the one ``tagsift`` console
script by :func:`register` (called from ``worker.cli``). Heavy imports happen inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer


def register(cli: typer.Typer) -> None:
    """Add the API's commands to ``cli``."""
    cli.command()(migrate)
    cli.command("create-api-key")(create_api_key)
    cli.command()(serve)


def migrate(revision: str = "head") -> None:
    """Apply database migrations to the configured database (TAGSIFT_DATABASE_URL)."""
    from app.config import get_settings
    from app.db import upgrade_database

    upgrade_database(revision=revision)
    typer.echo(f"database at {_safe_url(get_settings().database_url)} is at {revision}")


def create_api_key(
    owner: Annotated[str, typer.Option("--owner", help="Owner (tenant) name.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Who holds the key (recorded with each review made with it).")
    ] = None,
) -> None:
    """Create an API key for OWNER (created if new) and print it; only its hash is stored."""
    from app.db import session_scope
    from app.services.api_keys import create_api_key as _create

    try:
        with session_scope() as session:
            key = _create(session=session, owner_name=owner, name=name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(key)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default TAGSIFT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default TAGSIFT_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="API processes.")] = 1,
) -> None:
    """Run the HTTP API (uvicorn). Applies migrations first when the database is the embedded SQLite."""
    import uvicorn

    from app.config import get_settings
    from app.db import upgrade_database
    from app.logs import logging_config

    settings = get_settings()
    require_storage()
    if settings.is_embedded:
        upgrade_database()
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=logging_config(settings.log_level),
        access_log=False,  # app.access logs each request, with its request id (app/api/request_log.py)
    )


def require_storage() -> None:
    """Check the blob store (TAGSIFT_STORAGE_URL) before serving: a bad setting stops the command with one line
    that names it, instead of a traceback on the first upload or job."""
    from app.storage import StorageError, check_storage

    try:
        check_storage()
    except StorageError as exc:
        typer.echo(f"tagsift: {exc}", err=True)
        raise typer.Exit(2) from None


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
