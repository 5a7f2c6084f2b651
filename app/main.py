"""The FastAPI application: middleware, error handlers and routers; no logic of its own."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import queue
from app.api.bodies import JsonBodyMiddleware
from app.api.errors import install_error_handlers
from app.api.limits import BodyLimitMiddleware
from app.api.openapi import add_links
from app.api.request_log import RequestLogMiddleware
from app.api.routes import audits, datasets, items, jobs, label_studio, models, predict, refits, webhooks
from app.db import get_engine
from app.storage import get_storage
from app.web.routes import install_web


def create_app() -> FastAPI:
    api = FastAPI(
        title="tagsift",
        version="0.1.0",
        description="Weakly labelled image annotation: candidate tag sets in, disambiguated tags out. "
        "Every endpoint but /healthz, /readyz and the docs needs `Authorization: Bearer <key>`; "
        "errors are application/problem+json. The web app for annotators is at /ui/.",
        docs_url=None,  # /docs and /redoc come from app.web, with vendored assets (no CDN)
        redoc_url=None,
    )
    install_error_handlers(api)
    api.add_middleware(JsonBodyMiddleware)  # inside BodyLimitMiddleware: reads through its size and time limits
    api.add_middleware(BodyLimitMiddleware)
    api.add_middleware(RequestLogMiddleware)  # added last: outermost, so it sees every answer, a 413 included

    @api.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @api.get(
        "/readyz", tags=["health"], responses={503: {"description": "database, broker or object store unreachable"}}
    )
    def readyz() -> JSONResponse:
        """The database and the broker answer (and the object store, when TAGSIFT_STORAGE_URL is s3://)."""
        checks = {"database": _database_ok(), "broker": _broker_ok()}
        storage = get_storage()
        if storage.remote:
            checks["storage"] = _storage_ok(storage)
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    for module in (datasets, audits, items, jobs, models, predict, label_studio, webhooks, refits):
        api.include_router(module.router)
    generate = api.openapi
    api.openapi = lambda: add_links(generate())  # type: ignore[method-assign]  # FastAPI caches the document
    install_web(api)
    return api


def _database_ok() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _storage_ok(storage) -> bool:
    try:
        storage.exists("0" * 64)  # a HEAD request: answered (found or not) means reachable
        return True
    except Exception:
        return False


def _broker_ok() -> bool:
    try:
        return queue.broker_reachable()
    except Exception:
        return False


app = create_app()
