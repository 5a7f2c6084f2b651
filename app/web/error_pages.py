"""Error pages for people: an error on a ``/ui/`` page (or any request from a browser asking for HTML) renders a page
with the message, what to do and a way back; the API and the pages' JSON calls (``/ui/api/``) keep problem+json.

Each of the API's exception handlers (``app.api.errors``) is wrapped: it still builds the problem, and the page
shows its ``detail``; the status code stays the problem's."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from starlette.responses import Response

#: What to do next, by status code.
NEXT_STEP = {
    400: "Check what you typed or chose, then try again.",
    401: "Sign in, then open the page again.",
    403: "The form was open too long or came from another site: go back, reload the page and try again.",
    404: "The address is wrong, or the thing belongs to another team or was deleted. Start again from your datasets.",
    405: "This address is not meant to be opened this way. Go back and use the page's buttons.",
    409: "The page is older than what is stored: reload it to see the current state.",
    413: "The upload is too large: send fewer or smaller files at once.",
    422: "Some of what was sent is not valid: go back, correct it and try again.",
    429: "Too many requests at once: wait a moment, then try again.",
}
FALLBACK_STEP = (
    "Try again in a moment; if it keeps failing, tell whoever runs tagsift (the server log names the error)."
)
NO_PAGE = ("/ui/api/", "/ui/static/", "/ui/thumbs/")


def wants_html(request: Request) -> bool:
    """A person's browser is asking: a ``/ui/`` page, or an ``Accept`` that prefers HTML (never the JSON calls)."""
    path = request.url.path
    if path.startswith(NO_PAGE):
        return False
    if path.startswith("/ui/") or path == "/ui":
        return True
    accept = request.headers.get("accept", "")
    return "text/html" in accept.split(",")[0]


def _page(request: Request, problem: Response) -> Response:
    from app.web.pages import templates  # the pages module imports this one's neighbours; no cycle at import time

    try:
        body = json.loads(bytes(problem.body))
    except (ValueError, AttributeError):
        body = {}
    status = problem.status_code
    context = {
        "user": None,
        "csrf": None,
        "status": status,
        "title": body.get("title") or "Error",
        "detail": body.get("detail") or "Something went wrong.",
        "code": body.get("code") or "",
        "errors": [e.get("message", "") for e in body.get("errors") or [] if isinstance(e, dict)][:20],
        "next_step": NEXT_STEP.get(status, FALLBACK_STEP if status >= 500 else NEXT_STEP[400]),
        "back": request.headers.get("referer") if _same_site(request) else None,
    }
    headers = {k: v for k, v in problem.headers.items() if k.lower() in ("allow", "retry-after")}
    return templates.TemplateResponse(request, "error.html", context, status_code=status, headers=headers)


def _same_site(request: Request) -> bool:
    referer = request.headers.get("referer", "")
    return referer.startswith(f"{request.url.scheme}://{request.headers.get('host', '')}/")


def install_error_pages(api: FastAPI) -> None:
    """Wrap every exception handler already installed on ``api`` (call after ``install_error_handlers``)."""
    for key, handler in list(api.exception_handlers.items()):
        api.exception_handlers[key] = _wrap(handler)


def _wrap(handler):
    async def for_people(request: Request, exc: Exception) -> Response:
        response = handler(request, exc)
        if hasattr(response, "__await__"):
            response = await response
        if wants_html(request) and response.status_code >= 400 and isinstance(response, Response):
            media = response.headers.get("content-type", "")
            if "json" in media:
                return _page(request, response)
        return response

    return for_people
