"""The locks: requirements.txt (what the venv and the images install) and requirements-bench.txt
(only `make bench`), the bench pins adding to the main lock without overriding any of its pins."""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamflow_mlops.platform.bento import canonical, read_pins

REPO = Path(__file__).resolve().parents[2]


def test_bench_packages_are_pinned_beside_the_main_lock_not_in_it():
    lock = read_pins(REPO / "requirements.txt")
    bench = read_pins(REPO / "requirements-bench.txt")
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    assert {canonical(name) for name in extra} <= set(bench)
    assert set(lock) & set(bench) == set()  # the images (which install requirements.txt) don't get them
