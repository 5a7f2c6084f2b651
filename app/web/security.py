"""Security of the web app: response headers for every response, the session cookie and CSRF checks.

* Every response gets a Content-Security-Policy without inline scripts (``script-src 'self'``), with
  ``frame-ancestors 'none'``, plus ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
  ``Referrer-Policy: same-origin``; HTML pages and the scripts' JSON calls get ``Cache-Control: no-store``.
* The session cookie is HttpOnly, SameSite=Lax, and Secure when the request came over HTTPS.
* A state-changing request (every POST of the web app) must carry the session's CSRF token (form field
  ``csrf_token`` or header ``X-CSRF-Token``) and, when the browser sends one, an ``Origin`` equal to the app's.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.types import Message, Receive, Scope, Send

from app.asgi import HTTPMiddleware
from app.config import get_settings
from app.db import get_sessionmaker
from app.errors import ApiError
from app.services import web_sessions
from app.services.web_sessions import SignedIn
from app.ttl_cache import TTLCache

SESSION_COOKIE = "tagsift_session"
LOGIN_CSRF_COOKIE = "tagsift_login_csrf"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeadersMiddleware(HTTPMiddleware):
    """Adds :data:`HEADERS` to every HTTP response (pure ASGI: streaming responses pass through untouched)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [h for h in HEADERS if h[0] not in present]
                if b"cache-control" not in present and _private(scope, headers):
                    extra.append(NO_STORE)
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: Pages and the scripts' JSON calls hold a person's data: never kept by the browser (Back after signing out shows
#: nothing), unlike static files and thumbnails, which carry their own Cache-Control.
NO_STORE = (b"cache-control", b"no-store")


def _private(scope: Scope, headers: list) -> bool:
    if scope.get("path", "").startswith("/ui/api/"):
        return True
    return any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)


class SignInRequired(Exception):
    """A page needs a signed-in user: the handler redirects to the sign-in page."""


class CsrfRejected(ApiError):
    status, code = 403, "csrf_rejected"


def is_https(request: Request) -> bool:
    return request.url.scheme == "https" or get_settings().public_url.lower().startswith("https://")


def set_cookie(response, request: Request, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax", secure=is_https(request))


def _lookup(token: str | None) -> SignedIn | None:
    session = get_sessionmaker()()
    try:
        return web_sessions.signed_in(session=session, token=token)
    finally:
        session.close()


#: session token digest -> the signed-in user, remembered for ``TAGSIFT_LOOKUP_CACHE_SECONDS`` (as API keys are):
#: a review page's 200 thumbnails then cost no database query each. Signing out forgets it in this process at once;
#: another API process stops accepting the cookie within that time.
session_cache: TTLCache[SignedIn] = TTLCache()


async def current_user(request: Request) -> SignedIn:
    """The signed-in user; pages without one redirect to the sign-in page."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired()
    key = web_sessions.digest(token)
    user = session_cache.get(key)
    if user is None:
        user = await run_in_threadpool(_lookup, token)
        if user is None:
            raise SignInRequired()
        session_cache.put(key, user, get_settings().lookup_cache_seconds)
    return user


def forget_session(token: str | None) -> None:
    if token:
        session_cache.discard(web_sessions.digest(token))


UserDep = Annotated[SignedIn, Depends(current_user)]


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (``Origin`` or ``Sec-Fetch-Site``)."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin.rstrip("/") != expected:
            return False
    elif origin == "null":
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


async def check_csrf(request: Request, user: UserDep) -> SignedIn:
    """A POST's CSRF token (header ``X-CSRF-Token`` or form field ``csrf_token``) must be the session's."""
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        given = (await request.form()).get("csrf_token")
    if not same_origin(request) or not web_sessions.csrf_ok(user.csrf_token, given if isinstance(given, str) else None):
        raise CsrfRejected("CSRF check failed: reload the page and try again")
    return user


CsrfUserDep = Annotated[SignedIn, Depends(check_csrf)]


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)
