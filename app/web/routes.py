"""Mounts the web app on the API: pages, their JSON calls, static files, offline /docs and /redoc, headers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.web import actions, audit_pages, item_pages, map_pages, pages
from app.web.error_pages import install_error_pages
from app.web.fastpath import ThumbnailFastPath
from app.web.security import SecurityHeadersMiddleware, SignInRequired

STATIC = pages.HERE / "static"
SWAGGER = "/ui/static/vendor/swagger-ui-5.35.0"
REDOC = "/ui/static/vendor/redoc-2.5.4"


def install_web(api: FastAPI) -> None:
    """Add the web app to ``api`` (call after the API's routers). Needs ``FastAPI(docs_url=None, redoc_url=None)``:
    the docs pages here load Swagger UI and ReDoc from tagsift itself, not from a CDN."""
    install_error_pages(api)  # before the sign-in handler below: that one answers with a redirect, not a problem
    api.add_middleware(ThumbnailFastPath)
    api.add_middleware(SecurityHeadersMiddleware)  # added last: the outermost, so the fast path's answers get it
    api.mount("/ui/static", StaticFiles(directory=STATIC), name="static")
    api.include_router(pages.router)
    api.include_router(audit_pages.router)
    api.include_router(item_pages.router)
    api.include_router(map_pages.router)
    api.include_router(actions.router)

    @api.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.url.path.startswith("/ui/api/") or request.method != "GET":
            return JSONResponse(
                {"title": "Unauthorized", "status": 401, "detail": "sign in first", "code": "unauthorized"},
                status_code=401,
                media_type="application/problem+json",
            )
        return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303)

    @api.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/datasets", status_code=303)

    @api.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        return pages.templates.TemplateResponse(
            request, "swagger.html", {"base": SWAGGER, "openapi_url": api.openapi_url}
        )

    @api.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return pages.templates.TemplateResponse(request, "redoc.html", {"base": REDOC, "openapi_url": api.openapi_url})
