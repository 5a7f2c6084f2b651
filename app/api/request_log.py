"""One log line per request, and the request id: ``X-Request-ID`` accepted (when sane) or made, and returned.

The line (logger ``app.access``, level INFO) carries the method, the path, the status, the duration in ms and, in
its context field, the request id (``app.logs``). The id is in a context variable while the request is handled, so
every line the handler logs carries it and ``POST /datasets/{id}/jobs`` stores it on the job it creates.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from app import logs
from app.asgi import HTTPMiddleware

log = logging.getLogger("app.access")

HEADER = "X-Request-ID"


class RequestLogMiddleware(HTTPMiddleware):
    """Outermost middleware: sets the request id, adds it to the response, logs the request once it is answered."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = logs.clean_request_id(incoming)
        token = logs.request_id.set(rid)
        status = 500  # what the client gets when the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "method=%s path=%s status=%d duration_ms=%.1f",
                scope.get("method", "-"),
                scope.get("path", "-"),
                status,
                (time.perf_counter() - started) * 1000,
            )
            logs.request_id.reset(token)
