"""Run the benchmarks: `python -m bench [name ...] [--flag ...]` (names like `ingest`, `features`,
`serving`; flags such as `scale`'s `--10m` are left in sys.argv for the benchmark to read)."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from bench.harness import machine


def main(argv: list[str]) -> int:
    every = sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))
    names = [a for a in argv if not a.startswith("--")] or every
    print(f"machine: {machine()}")
    failed = []
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.bench_{name}").main()
        except Exception as exc:  # one broken benchmark should not hide the others' figures
            failed.append(name)
            print(f"bench {name} failed: {exc!r}")
        print(f"(bench {name}: {time.perf_counter() - started:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
