"""`make test-compose`: the container mode for real, on a Docker engine.

These tests build the images, start compose stacks and run the lifecycle through them (about
20 minutes), so they run only when asked: `make test-compose` sets STREAMFLOW_COMPOSE_TESTS=1.
`make test` (and a bare `pytest tests`) leaves this folder out.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.compose.stack import LOGS, ComposeStack, Timings, ensure_engine

if os.environ.get("STREAMFLOW_COMPOSE_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]

_TIMINGS = Timings()


@pytest.fixture(scope="session")
def timings() -> Timings:
    return _TIMINGS


@pytest.fixture(scope="session")
def engine(timings) -> None:
    ensure_engine(timings)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.session.stash.setdefault(FAILED, []).append(item.nodeid)
    return report


FAILED = pytest.StashKey[list]()


def managed_stack(request, timings: Timings, stack: ComposeStack, setup: Callable[[ComposeStack], None]):
    """Set the stack up for a module and tear it down after (`down -v`); when its setup or one of
    the module's tests failed, every container's log is saved first and the folder printed."""
    failed_before = len(request.session.stash.get(FAILED, []))
    reason = None
    try:
        stack.write_env()
        setup(stack)
        yield stack
        failed = request.session.stash.get(FAILED, [])[failed_before:]
        reason = "failed: " + ", ".join(failed) if failed else None
    except BaseException as exc:
        reason = f"setup failed: {exc!r}"
        raise
    finally:
        if reason:
            target = stack.save_logs(reason)
            print(f"\n[compose] {stack.name}: logs of every container saved under {target}", flush=True)
        with timings.phase(f"{stack.name}: down -v"):
            stack.down()


def pytest_terminal_summary(terminalreporter):
    if not _TIMINGS.phases:
        return
    terminalreporter.section("compose timings")
    for line in _TIMINGS.lines():
        terminalreporter.write_line(line)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "timings.txt").write_text("\n".join(_TIMINGS.lines()) + "\n")
