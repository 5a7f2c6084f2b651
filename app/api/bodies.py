"""Every JSON request body goes through :mod:`app.jsonread` before a route sees it.

FastAPI parses JSON bodies with :func:`json.loads`, which answers hostile JSON with a 500 (a 4,301-digit integer, a
3,000-deep nesting) or a misleading message (``NaN`` accepted and then "should be less than or equal to 100"; a
non-JSON body reported at field ``"0"``). This middleware reads a body whose Content-Type is JSON, checks it with the
bounded reader and answers 422 problem+json naming the value (``lr``, ``tasks[3].data``) when it is refused; a body
it accepts is passed on unchanged, so the route's own parsing cannot fail on anything the bounds refuse.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from app.api.errors import problem_response
from app.asgi import HTTPMiddleware
from app.errors import ApiError, FieldError
from app.jsonread import JsonRefused, loads

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class JsonBodyMiddleware(HTTPMiddleware):
    """Check JSON bodies with :func:`app.jsonread.loads` (422 naming the value), then replay them to the app."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctype = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"content-type"), "")
        if scope.get("method") not in _WITH_BODY or not is_json(ctype):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except ApiError as exc:  # the size limit or the body timeout, raised by the receive of BodyLimitMiddleware
            response = problem_response(
                Request(scope), status=exc.status, code=exc.code, detail=exc.detail, headers=exc.headers
            )
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        if body.strip():
            try:
                loads(body)
            except JsonRefused as exc:
                field = exc.path or "body"
                message = f"{field}: {exc.reason}"
                response = problem_response(
                    Request(scope),
                    status=422,
                    code="invalid_input",
                    detail=message,
                    errors=[FieldError(field=field, message=message)],
                )
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
