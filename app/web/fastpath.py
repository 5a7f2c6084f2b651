"""The thumbnail fast path: a review page asks for 200 thumbnails at once, and each would otherwise go through
routing, dependencies and the thread pool. This ASGI middleware answers ``GET /ui/thumbs/{item}/{size}`` straight
from what this process already holds (the signed-in session, the owner's item -> image sha256, the resized bytes);
on any miss it hands the request on to the route (``app.web.pages.thumbnail``), which checks everything and fills
those caches. Same answers either way: owner-scoped, ETag, a year's max-age, 304 on a matching If-None-Match."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.services import thumbnails, web_sessions
from app.ttl_cache import TTLCache
from app.web.security import SESSION_COOKIE, session_cache

#: (owner id, item id) -> the item's image sha256, filled by the route after its owner-scoped lookup.
thumb_items: TTLCache[str] = TTLCache(size=50_000)

PREFIX = "/ui/thumbs/"


def thumbnail_headers(sha: str, size: int) -> dict[str, str]:
    return {"ETag": f'"{sha[:32]}-{size}"', "Cache-Control": "private, max-age=31536000, immutable"}


class ThumbnailFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            response = _from_memory(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _from_memory(scope: Scope) -> Response | None:
    parts = scope["path"][len(PREFIX) :].split("/")
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    item_id, size = parts[0], int(parts[1])
    headers = Headers(scope=scope)
    token = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
    if not token:
        return None
    user = session_cache.get(web_sessions.digest(token))
    if user is None:
        return None
    sha = thumb_items.get((user.owner.id, item_id))
    if sha is None:
        return None
    out = thumbnail_headers(sha, size)
    if headers.get("if-none-match") == out["ETag"]:
        return Response(status_code=304, headers=out)
    data = thumbnails.cached(sha, size)
    if data is None:
        return None
    return Response(data, media_type="image/jpeg", headers=out)
