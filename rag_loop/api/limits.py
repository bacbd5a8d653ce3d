"""A plain ASGI middleware that bounds the size of request bodies.

It refuses a declared Content-Length over the limit before the app runs, and counts the
bytes of bodies sent without one (chunked transfer), failing the request with 413 as soon as
the count passes the limit. Being plain ASGI it adds no task or stream per request, unlike
`@app.middleware("http")`.

FastAPI's own `max_body_size` (0.16x) is not used: it answers a declared oversize body with
a plain-text 413 before any handler runs, outside the one JSON error shape (tried).
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_loop.api.errors import error_payload


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(send, scope["path"])
                    return
                break
        received = 0
        max_bytes = self.max_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # FastAPI re-raises HTTPException from body reading; the app's handler
                    # turns it into the one error shape.
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"the body is larger than {self.max_bytes} bytes"

    async def _refuse(self, send: Send, path: str) -> None:
        """413 in the protocol's error shape, as the app would have answered a chunked body."""
        payload = error_payload(413, "payload_too_large", self._message(), path=path)
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
