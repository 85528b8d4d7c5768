"""ASGI guards in front of the BentoML routes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# A /predict_batch of MAX_BATCH_IDS ids is about 10 KB of JSON; 64 KB leaves room and stops a
# client from making the worker parse megabytes.
MAX_BODY_BYTES = 64 * 1024


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 400 before the app parses it."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Callable[[dict[str, Any]], Any]) -> None:
        body = json.dumps({"error": "request_too_large", "max_bytes": self.max_bytes}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read at most max_bytes, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._reject(send)
                return
        replayed = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return replayed
            return await receive()

        await self.app(scope, replay, send)
