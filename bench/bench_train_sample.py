"""Holdout AUC against the training sample's size on a large month (issue 25, README "Scale").

One generated month of BENCH_TRAIN_SAMPLE_USERS users (default 10,000,000; built in memory by
the generator, no warehouse: the point is the model, not the data path), split like the
training DAG splits it: the evaluation holdout (20% of users, ~2M rows) is scored in full, and
the default model is fitted on seeded samples of the other rows (model/sampling.py's hash, as
`TrainingSplit` draws them) of 100k, 300k, 1M and 3M rows. Each line: sample size, holdout AUC,
its gap to the generator's true probabilities (the best any model can do), fit seconds, and
the AUC's standard error on the holdout (Hanley-McNeil), so a difference can be read against
the noise.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

SAMPLES = (100_000, 300_000, 1_000_000, 3_000_000)
SEEDS = (42, 7)


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return math.sqrt(variance)


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from streamflow_mlops.config.schema import ENTITY, FEATURE_NAMES, LABEL
    from streamflow_mlops.model.sampling import sample_priority
    from streamflow_mlops.model.training import DEFAULT_CLASSIFIER, build_pipeline, holdout_split, predict_scores
    from streamflow_mlops.synthetic.generate import DropSpec, build_drop

    users = int(os.environ.get("BENCH_TRAIN_SAMPLE_USERS", "10000000"))
    started = time.perf_counter()
    tables, truth = build_drop(DropSpec(month=0, users=users, seed=42))
    from streamflow_mlops.model.training import frame_from_tables

    frame = frame_from_tables(tables, DropSpec(month=0, users=users).as_of)
    del tables
    pool, holdout = holdout_split(frame)
    del frame
    labels = holdout[LABEL].to_numpy()
    positives = int(labels.sum())
    best = float(roc_auc_score(labels, truth.set_index(ENTITY).loc[holdout[ENTITY], "churn_probability"].to_numpy()))
    print(
        f"{users:,} users: {len(pool):,} training rows, {len(holdout):,} holdout rows "
        f"(built in {time.perf_counter() - started:.0f} s); best achievable holdout AUC {best:.4f}"
    )
    print(f"  {'sample':>10}  {'seed':>4}  {'holdout AUC':>11}  {'gap to best':>11}  {'fit s':>6}  {'AUC s.e.':>8}")
    for size in [s for s in SAMPLES if s <= len(pool)]:
        for seed in SEEDS:
            priority = sample_priority(pool[ENTITY], seed)
            rows = pool.iloc[np.sort(np.argpartition(priority, size - 1)[:size])]
            pipeline = build_pipeline(DEFAULT_CLASSIFIER, seed, FEATURE_NAMES)
            fit_started = time.perf_counter()
            pipeline.fit(rows[list(FEATURE_NAMES)], rows[LABEL].to_numpy())
            fit_seconds = time.perf_counter() - fit_started
            auc = float(roc_auc_score(labels, predict_scores(pipeline, holdout)))
            se = hanley_mcneil_se(auc, positives, len(labels) - positives)
            print(
                f"  {size:>10,}  {seed:>4}  {auc:>11.5f}  {best - auc:>11.5f}  {fit_seconds:>6.1f}  {se:>8.5f}",
                flush=True,
            )
