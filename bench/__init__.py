"""Benchmarks: `make bench` runs every `bench_*.py` module's `main()`; each prints its figures."""

import sys
from pathlib import Path

# `python -m bench` from a plain shell finds the library the way Airflow and the tests do.
_PLUGINS = str(Path(__file__).resolve().parents[1] / "plugins")
if _PLUGINS not in sys.path:
    sys.path.insert(0, _PLUGINS)
