"""BentoML 1.4 internals the service relies on, in one place.

- `install_request_timer_fix()`: BentoML's `TimeoutMiddleware` schedules a timer per request and
  never cancels it; thousands of live timers per worker made full GC collections stall it
  (docs/decisions.md, "Request timers"). The replacement keeps the contract (a 504 JSON answer when
  no response has started within `traffic.timeout`, the request cancelled) and cancels its timer.
  No upstream issue found for it (searched BentoML's tracker, 2026-12); #5642 is a neighbour.
- `pinned_model_store(home)`: BentoML reads BENTOML_HOME once per process and caches its model
  store; the public API has no argument for another store, so the container's provider is patched
  for the block.

Written against UPSTREAM; tests/unit/test_extensions.py fails when the patched code changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

UPSTREAM = "bentoml==1.4.40"
# The upstream code this module replaces or reaches into, by qualified name (contract test).
TIMEOUT_CALL = "bentoml._internal.server.http.traffic:TimeoutMiddleware.__call__"
PATCHED = (
    TIMEOUT_CALL,
    "bentoml._internal.server.http.traffic:TimeoutMiddleware.__init__",
    "bentoml._internal.models.model:ModelStore.__init__",
)

# BentoML's own handler, kept when install() replaces it (tests compare the two).
stock_call: Any = None


def replaced(name: str) -> Any:
    """The upstream object an installed patch replaced (None before install)."""
    return {TIMEOUT_CALL: stock_call}[name]


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


def install_request_timer_fix() -> bool:
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


@contextmanager
def pinned_model_store(home: Path) -> Iterator[None]:
    """BentoML's model store at `home` for the block, whatever BENTOML_HOME this process saw first."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home.mkdir(parents=True, exist_ok=True)
    with BentoMLContainer.model_store.patch(ModelStore(str(home))):
        yield
