"""The serving worker's heap and timers (issue 16): what would make a full GC walk grow with traffic."""

from __future__ import annotations

import asyncio
import gc
import json
import os

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from prometheus_client import CollectorRegistry, generate_latest

from streamflow_mlops.extensions import bentoml as bentoml_extension
from streamflow_mlops.serving.heap import GcPauses


class TimerLog:
    """Wraps the running loop's call_later to keep every timer it hands out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.handles: list[asyncio.TimerHandle] = []
        original = loop.call_later

        def call_later(delay, callback, *args, **kwargs):
            handle = original(delay, callback, *args, **kwargs)
            self.handles.append(handle)
            return handle

        loop.call_later = call_later  # type: ignore[method-assign]

    def live(self) -> list[asyncio.TimerHandle]:
        return [handle for handle in self.handles if not handle.cancelled()]


def http_scope() -> dict:
    return {"type": "http", "method": "POST", "path": "/predict", "headers": []}


async def serve(app, timeout: float) -> tuple[list[dict], TimerLog]:
    timers = TimerLog(asyncio.get_running_loop())
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await TimeoutMiddleware(app, timeout=timeout)(http_scope(), receive, send)
    return sent, timers


async def answer_ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture()
def stock_timeout():
    """BentoML's own handler, also when an earlier test loaded the service (which installs the fix)."""
    current = TimeoutMiddleware.__call__
    if bentoml_extension.stock_call is not None:
        TimeoutMiddleware.__call__ = bentoml_extension.stock_call
    yield
    TimeoutMiddleware.__call__ = current


@pytest.fixture()
def fixed_timeout():
    original = TimeoutMiddleware.__call__
    assert bentoml_extension.install_request_timer_fix()
    yield
    TimeoutMiddleware.__call__ = original


def test_bentomls_own_timeout_middleware_leaves_a_live_timer_per_request(stock_timeout):
    """The defect the fix is for: after the answer, BentoML 1.4's timer is still scheduled."""

    async def run():
        sent, timers = await serve(answer_ok, timeout=30)
        return sent, timers.live()

    sent, live = asyncio.run(run())
    assert sent[0]["status"] == 200
    assert len(live) == 1


def test_fixed_timeout_middleware_cancels_its_timer_once_the_answer_starts(fixed_timeout):
    async def run():
        sent, timers = await serve(answer_ok, timeout=30)
        return sent, timers.live(), len(timers.handles)

    sent, live, scheduled = asyncio.run(run())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200
    assert scheduled == 1 and live == []


def test_fixed_timeout_middleware_still_answers_504_and_cancels_a_slow_request(fixed_timeout):
    cancelled = []

    async def slow(scope, receive, send):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def run():
        sent, timers = await serve(slow, timeout=0.05)
        await asyncio.sleep(0)
        return sent, timers.live()

    sent, live = asyncio.run(run())
    assert sent[0]["status"] == 504
    assert "0.05 seconds" in json.loads(sent[1]["body"])["error"]
    assert cancelled == [True] and live == []


def test_fixed_timeout_middleware_passes_on_an_apps_error_at_once(fixed_timeout):
    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    async def run():
        await serve(broken, timeout=30)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(asyncio.wait_for(run(), 5))


def test_gc_pauses_are_counted_per_generation_and_exported():
    pauses = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.uninstall()
    assert pauses.count[0] >= 1 and pauses.count[2] >= 1
    assert pauses.max_s[2] > 0 and pauses.total_s[2] >= pauses.max_s[2]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(pauses)
    lines = generate_latest(registry).decode().splitlines()
    pid = os.getpid()
    assert any(line.startswith(f'streamflow_gc_pauses_total{{generation="2",pid="{pid}"}}') for line in lines)
    assert any(line.startswith(f'streamflow_gc_frozen_objects{{pid="{pid}"}}') for line in lines)
