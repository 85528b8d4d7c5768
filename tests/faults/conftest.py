"""`make test-faults`: parts of a running compose stack killed mid-work, the outcome asserted.

One stack for the whole suite (the `tests/compose` machinery: build, `up --wait`, logs saved on a
failure, `down -v`), the faults applied one after another; it runs only when asked:
`make test-faults` sets STREAMFLOW_FAULT_TESTS=1. `make test` (and a bare `pytest tests`) leaves
this folder out.
"""

from __future__ import annotations

import os

from tests.compose.conftest import (  # noqa: F401 (fixtures and hooks, shared with tests/compose)
    engine,
    pytest_runtest_makereport,
    pytest_terminal_summary,
    timings,
)

if os.environ.get("STREAMFLOW_FAULT_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
