"""The request body limit (``settings.max_request_bytes``): 413 problem+json, checked before and while reading."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from app.api.errors import problem_response
from app.asgi import HTTPMiddleware
from app.config import get_settings
from app.errors import PayloadTooLarge


class BodyLimitMiddleware(HTTPMiddleware):
    """Refuse bodies over the limit: at once by ``Content-Length``, else when the streamed bytes pass it."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = get_settings().max_request_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > limit:
                    response = problem_response(
                        None,
                        status=413,
                        code="payload_too_large",
                        detail=f"the request body is {length} bytes, over the limit of {limit}",
                    )
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)
