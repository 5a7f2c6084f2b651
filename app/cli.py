"""The API's commands (``tagsift serve``, ``migrate``, ``create-api-key``, ``list-api-keys``, ``revoke-api-key``),
registered on the one ``tagsift`` console
script by :func:`register` (called from ``worker.cli``). Heavy imports happen inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer


def register(cli: typer.Typer) -> None:
    """Add the API's commands to ``cli``."""
    cli.command()(migrate)
    cli.command("create-api-key")(create_api_key)
    cli.command("list-api-keys")(list_api_keys)
    cli.command("revoke-api-key")(revoke_api_key)
    cli.command("reencrypt-secrets")(reencrypt_secrets)
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


def list_api_keys(
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's keys.")] = None,
) -> None:
    """List API keys, one per line: id, prefix, owner, holder's name, created, and `revoked <when>` or `active`.
    Keys are stored hashed: the prefix (the key's first 12 characters) is how to recognise one."""
    from app.db import session_scope
    from app.services.api_keys import list_api_keys as _list

    with session_scope() as session:
        for k in _list(session=session, owner_name=owner):
            state = f"revoked {k.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if k.revoked_at else "active"
            created = f"{k.created_at:%Y-%m-%dT%H:%M:%SZ}"
            typer.echo(f"{k.id}  {k.prefix}  owner={k.owner.name}  name={k.name or '-'}  created {created}  {state}")


def revoke_api_key(
    key: Annotated[str, typer.Argument(help="The key's id, its prefix (list-api-keys), or the key itself.")],
) -> None:
    """Revoke an API key: it is refused (401) from now on. A running API process that used it in the last
    TAGSIFT_LOOKUP_CACHE_SECONDS may accept it until that cache entry expires."""
    from app.config import get_settings
    from app.db import session_scope
    from app.services.api_keys import revoke_api_key as _revoke

    try:
        with session_scope() as session:
            row = _revoke(session=session, ident=key)
            prefix, key_id, owner = row.prefix, row.id, row.owner.name
    except (LookupError, ValueError) as exc:
        typer.echo(f"tagsift: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    seconds = get_settings().lookup_cache_seconds
    typer.echo(
        f"revoked key {prefix} (id {key_id}) of owner {owner}; running API processes stop accepting it within"
        f" {seconds:g} s (TAGSIFT_LOOKUP_CACHE_SECONDS)"
    )


def reencrypt_secrets() -> None:
    """Encrypt every webhook secret with the newest key of TAGSIFT_SECRET_KEYS (plain-text ones too): the step of a
    key rotation between adding the new key (first) and removing the old ones."""
    from app.db import session_scope
    from app.secretbox import SecretKeyError
    from app.services.webhooks import reseal_secrets

    try:
        with session_scope() as session:
            changed, total = reseal_secrets(session=session)
    except SecretKeyError as exc:
        typer.echo(f"tagsift: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{changed} of {total} webhook secrets encrypted with the newest key of TAGSIFT_SECRET_KEYS")


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
