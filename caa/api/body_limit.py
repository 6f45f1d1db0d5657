"""The largest request body the API reads: an ASGI middleware that answers 413 before the
body is read whole.

The API's only body is a consent statement (``{"analysis": true}``, a few dozen bytes).
Without a limit, ``caa serve`` read a 50 MB body into memory before it answered 400 (API
Gateway caps bodies at 10 MB in front of the Lambda; uvicorn caps nothing). A declared
``Content-Length`` over the limit is refused at once, unread; a body sent without one
(chunked) is counted as it arrives and refused when it passes the limit: the 413 is sent
then, and the app is told the client has gone.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: the bytes of a request body the API reads (a consent statement needs a few dozen)
MAX_BODY_BYTES = 16 * 1024


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 ``{"detail": ...}``."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # answered here, and the app told the client is gone: whatever it makes
                    # of that (FastAPI: 400) is not sent
                    if not started:
                        await self._refuse(send)
                        refused = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, sending)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes:,} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared ``Content-Length``, None when absent or not a number (the server
    refuses a malformed one itself)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
