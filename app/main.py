"""The FastAPI application: middleware, error handlers and routers; no logic of its own."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import queue
from app.db import get_engine


def create_app() -> FastAPI:
    api = FastAPI(
        title="tagsift",
        version="0.1.0",
        description="Weakly labelled image annotation: candidate tag sets in, disambiguated tags out.",
    )

    @api.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"], responses={503: {"description": "database or broker unreachable"}})
    def readyz() -> JSONResponse:
        """The database and the broker answer."""
        checks = {"database": _database_ok(), "broker": queue.broker_reachable()}
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    return api


def _database_ok() -> bool:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


app = create_app()
