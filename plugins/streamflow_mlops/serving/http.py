"""ASGI guards in front of the BentoML routes: each answers a bad request with a 4xx JSON body before
BentoML parses it (BentoML turns some parser errors, e.g. a multipart body without a boundary, into 500s)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# A /predict_batch of MAX_BATCH_IDS ids is about 10 KB of JSON; 64 KB leaves room and stops a
# client from making the worker parse megabytes.
MAX_BODY_BYTES = 64 * 1024


# The routes take JSON only; "charset" is the one parameter that means anything for it.
JSON_MEDIA_TYPE = "application/json"


async def send_json_error(send: Callable[..., Any], status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def unsupported_body(headers: dict[bytes, bytes]) -> dict[str, Any] | None:
    """Why a request body can't be JSON for our routes, or None: a media type other than
    application/json (multipart, form, text...), a charset other than UTF-8, or any content coding."""
    encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
    if encoding not in ("", "identity"):
        return {"error": "unsupported_content_encoding", "content_encoding": encoding, "expected": "identity"}
    declared = headers.get(b"content-type")
    if declared is None:
        return None
    media_type, *params = (part.strip() for part in declared.decode("latin-1").split(";"))
    if media_type.lower() != JSON_MEDIA_TYPE:
        return {"error": "unsupported_media_type", "content_type": media_type, "expected": JSON_MEDIA_TYPE}
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return {"error": "unsupported_charset", "charset": value.strip(), "expected": "utf-8"}
    return None


class JsonBodyOnly:
    """ASGI middleware: a body that isn't plain UTF-8 JSON is answered 415 before the app parses it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            reason = unsupported_body(dict(scope.get("headers") or []))
            if reason is not None:
                await send_json_error(send, 415, reason)
                return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 400 before the app parses it."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Callable[[dict[str, Any]], Any]) -> None:
        await send_json_error(send, 400, {"error": "request_too_large", "max_bytes": self.max_bytes})

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
