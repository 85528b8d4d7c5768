"""Where should the drift gate's default threshold sit? Evidently drift shares on generated months.

For several generator seeds (7,043 users each, no warehouse needed), the share of drifted feature
columns (Evidently 0.7 `DataDriftPreset`, the columns of `compute_drift`) of:
undrifted months against month_000 (same population, behaviour redrawn, users aging), the
default-drifted month_001 against month_000, and, for one seed, each of month_001's drift
mechanisms alone and the whole drift at reduced strength. Also the seconds one comparison takes.

Run: `python -m bench.bench_drift` (or `make bench`).
"""

from __future__ import annotations

import time
from dataclasses import replace

from bench.harness import machine
from streamflow_mlops.model.training import frame_from_tables
from streamflow_mlops.monitoring.drift import DEFAULT_DRIFT_THRESHOLD, compute_drift
from streamflow_mlops.synthetic.generate import DEFAULT_DRIFT, NO_DRIFT, Drift, DropSpec, build_drop, default_drift

SEEDS = (1, 2, 3, 4, 5, 42)
# (reference month, current month): the champion's training month and the month being checked.
PAIRS = ((0, 1), (0, 2), (0, 3), (0, 6), (0, 12), (2, 3), (1, 2))


def features(month: int, seed: int, drift: Drift):
    spec = DropSpec(month, seed=seed, drift=drift)
    tables, _ = build_drop(spec)
    return frame_from_tables(tables, spec.as_of)


def scaled(drift: Drift, strength: float) -> Drift:
    return Drift(
        fee_rise=drift.fee_rise * strength,
        usage_drop=drift.usage_drop * strength,
        rebuffer_factor=1 + (drift.rebuffer_factor - 1) * strength,
        fiber_shift=drift.fiber_shift * strength,
    )


def row(label: str, reference, current) -> tuple[str, float, int, float, str]:
    started = time.perf_counter()
    result = compute_drift(reference, current)
    seconds = time.perf_counter() - started
    return label, result.drift_share, len(result.drifted_columns), seconds, ", ".join(result.drifted_columns)


def main() -> None:
    rows = []
    for seed in SEEDS:
        frames = {m: features(m, seed, default_drift(m)) for m in {m for pair in PAIRS for m in pair}}
        for ref, cur in PAIRS:
            kind = "drifted" if default_drift(cur) != NO_DRIFT or default_drift(ref) != NO_DRIFT else "undrifted"
            rows.append(row(f"seed {seed:>2} m{cur:03d} vs m{ref:03d} ({kind})", frames[ref], frames[cur]))
    seed = SEEDS[0]
    reference = features(0, seed, NO_DRIFT)
    mechanisms = {
        "fee rise only": replace(NO_DRIFT, fee_rise=DEFAULT_DRIFT.fee_rise),
        "usage drop only": replace(NO_DRIFT, usage_drop=DEFAULT_DRIFT.usage_drop),
        "rebuffering only": replace(NO_DRIFT, rebuffer_factor=DEFAULT_DRIFT.rebuffer_factor),
        "DSL->fiber only": replace(NO_DRIFT, fiber_shift=DEFAULT_DRIFT.fiber_shift),
        "month_001 drift x0.25": scaled(DEFAULT_DRIFT, 0.25),
        "month_001 drift x0.5": scaled(DEFAULT_DRIFT, 0.5),
        "month_001 drift x0.75": scaled(DEFAULT_DRIFT, 0.75),
    }
    for name, drift in mechanisms.items():
        rows.append(row(f"seed {seed:>2} m001 {name}", reference, features(1, seed, drift)))

    print(f"drift share of generated months (Evidently DataDriftPreset), machine: {machine()}")
    print(f"{'comparison':<44} {'share':>6} {'cols':>4} {'sec':>5}  drifted columns")
    for label, share, count, seconds, columns in rows:
        print(f"{label:<44} {share:>6.3f} {count:>4} {seconds:>5.1f}  {columns}")
    undrifted = [r[1] for r in rows if "(undrifted)" in r[0] and "m001" not in r[0]]
    drifted = [r[1] for r in rows if r[0].endswith("m000 (drifted)")]
    print(
        f"undrifted months: share {min(undrifted):.3f}-{max(undrifted):.3f}; "
        f"month_001 vs month_000: {min(drifted):.3f}-{max(drifted):.3f}; "
        f"default threshold {DEFAULT_DRIFT_THRESHOLD}"
    )


if __name__ == "__main__":
    main()
