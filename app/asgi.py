"""The base of tagsift's pure ASGI middlewares: lifespan and websocket scopes pass through, HTTP goes to ``handle``.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that streamed bodies, uploads and downloads alike, pass
through without being buffered.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HTTPMiddleware:
    """Subclasses implement :meth:`handle` for HTTP requests; every other scope goes straight to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
