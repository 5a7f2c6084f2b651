"""The request body limits: size (``settings.max_request_bytes``, 413) and pace
(``settings.request_body_timeout_seconds``, 408), both problem+json, checked before and while the body is read."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from app.api.errors import problem_response
from app.asgi import HTTPMiddleware
from app.config import get_settings
from app.errors import ApiError, PayloadTooLarge


def body_timeout(seconds: float) -> ApiError:
    """408: the client stopped sending its body (it holds a connection and a worker slot otherwise)."""
    return ApiError(
        f"body: no data for {seconds:g} s before the end of the request body (a body shorter than its"
        " Content-Length, or a client that stalled); TAGSIFT_REQUEST_BODY_TIMEOUT_SECONDS",
        status=408,
        code="request_timeout",
        headers={"Connection": "close"},
    )


class BodyLimitMiddleware(HTTPMiddleware):
    """Refuse bodies over the limit: at once by ``Content-Length``, else when the streamed bytes pass it; and a body
    that pauses longer than the timeout between two of its parts (408). Once the body has ended, ``receive`` is not
    timed (Starlette waits on it for the client's disconnect while a response streams)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = get_settings()
        limit, timeout = settings.max_request_bytes, settings.request_body_timeout_seconds
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
        ended = False

        async def limited_receive() -> Message:
            nonlocal seen, ended
            if ended or timeout <= 0:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), timeout)
                except TimeoutError:
                    raise body_timeout(timeout) from None
            if message["type"] == "http.request":
                ended = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)
