"""BentoML's request timeout (`traffic.timeout`) without a live timer left behind by every request.

BentoML 1.4's `TimeoutMiddleware` never cancels the timer it schedules per request; the timers pile
up in the oldest GC generation and make full collections stall the workers (docs/decisions.md,
"Request timers"). The replacement keeps the contract (a 504 JSON answer when no response has
started within the timeout; the request is cancelled) and cancels its timer once the response
starts or the request ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)

# BentoML's own handler, kept when install() replaces it (tests compare the two).
stock_call: Any = None


async def _call_with_cancelled_timer(self: Any, scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    started = loop.create_future()

    def timed_out() -> None:
        if not started.done():
            started.set_exception(TimeoutError())

    timer = loop.call_later(self.timeout, timed_out)

    async def send_started(message: dict) -> None:
        if not started.done():
            started.set_result(None)
        await send(message)

    request = asyncio.ensure_future(self.app(scope, receive, send_started))
    # An app that ends without sending anything releases the wait too (BentoML's waited the timeout out).
    request.add_done_callback(lambda _: started.done() or started.set_result(None))
    try:
        await started
    except TimeoutError:
        if request.cancel():
            from starlette.responses import JSONResponse

            message = f"Not able to process the request in {self.timeout} seconds"
            await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
        return None
    finally:
        timer.cancel()
    await request


def install() -> bool:
    """Replace BentoML's TimeoutMiddleware request handler (once per process); False, with a warning,
    when this BentoML has no such middleware (its own then runs unchanged)."""
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        logger.warning("BentoML has no TimeoutMiddleware here; its request timers are left as they are")
        return False
    global stock_call
    if TimeoutMiddleware.__call__ is not _call_with_cancelled_timer:
        stock_call = TimeoutMiddleware.__call__
        TimeoutMiddleware.__call__ = _call_with_cancelled_timer
    return True
