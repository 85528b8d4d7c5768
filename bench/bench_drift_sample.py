"""Does Evidently's drift on a sample decide as on the whole month? (issue 25, README "Scale")

The drift check compares a month with the champion's month on the md5 sample of about
`STREAMFLOW_DRIFT_SAMPLE_ROWS` users (features/retrieval.py `sample_condition`). Here, on two
generated months of BENCH_DRIFT_SAMPLE_USERS users (default 1,000,000; in memory, no warehouse),
for the drifted pair the demo meets (month_001 against month_000) and an undrifted one
(month_002 against month_000: the generator drifts only month_001): the drift
share, the drifted columns, the gate's decision and the seconds and peak memory of the
comparison, on the whole months and on md5 samples of 50,000 and 200,000 users (the same users
in both months, as in the DAG).
"""

from __future__ import annotations

import hashlib
import os
import resource
import time

import numpy as np

SAMPLES = (50_000, 200_000)


def md5_bucket(user_ids) -> np.ndarray:
    """The bucket `sample_condition` computes in Postgres: the first 15 hex digits of md5(user_id)."""
    return np.fromiter((int(hashlib.md5(u.encode()).hexdigest()[:15], 16) for u in user_ids), dtype=np.int64)


def main() -> None:
    from streamflow_mlops.config.schema import ENTITY
    from streamflow_mlops.features.retrieval import SAMPLE_BUCKETS
    from streamflow_mlops.model.training import frame_from_tables
    from streamflow_mlops.monitoring.drift import DEFAULT_DRIFT_THRESHOLD, compute_drift, drift_gate
    from streamflow_mlops.synthetic.generate import DropSpec, build_drop, default_drift

    users = int(os.environ.get("BENCH_DRIFT_SAMPLE_USERS", "1000000"))

    def month(m: int):
        spec = DropSpec(m, users=users, seed=42, drift=default_drift(m))
        tables, _ = build_drop(spec)
        return frame_from_tables(tables, spec.as_of)

    frames = {m: month(m) for m in (0, 1, 2)}
    buckets = md5_bucket(frames[0][ENTITY])
    print(f"{users:,} users a month; gate threshold {DEFAULT_DRIFT_THRESHOLD}")
    print(f"  {'pair':<22} {'rows':>9} {'share':>6} {'decision':>14} {'sec':>6}  drifted columns")
    for ref, cur in ((0, 1), (0, 2)):
        for rows in (*[s for s in SAMPLES if s < users], users):
            keep = buckets < SAMPLE_BUCKETS * rows // users
            reference, current = frames[ref][keep], frames[cur][frames[cur][ENTITY].isin(frames[ref][ENTITY][keep])]
            started = time.perf_counter()
            result = compute_drift(reference, current)
            seconds = time.perf_counter() - started
            decision, _ = drift_gate(result.drift_share, DEFAULT_DRIFT_THRESHOLD, True)
            print(
                f"  m{cur:03d} vs m{ref:03d}          {len(current):>9,} {result.drift_share:>6.3f} {decision:>14} "
                f"{seconds:>6.1f}  {', '.join(result.drifted_columns)}",
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"  peak RSS of this benchmark (the whole-month comparisons): {peak:.2f} GiB")
