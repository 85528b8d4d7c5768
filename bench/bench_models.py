"""Which classifier should the training pipeline default to? RF(300) vs HGB vs logistic regression.

On the generated month_000 (7,043 users, no warehouse needed), for each classifier and seed:
validation AUC (and the ceiling, the AUC of the generator's true probabilities on the same
rows), fit time, and the serving cost of one-row and 100-row `predict_proba` calls, both for the
whole pipeline on a DataFrame (what the service does) and for the bare classifier on an already
encoded array (what preprocessing costs).

Run: `python -m bench.bench_models` (or `make bench`).
"""

from __future__ import annotations

import statistics
import time

from bench.harness import machine
from streamflow_mlops.model.training import CLASSIFIERS, best_achievable_auc, frame_from_tables, train_model
from streamflow_mlops.synthetic.generate import DropSpec, build_drop

SEEDS = (42, 7, 2024)
LATENCY_CALLS = 100


def median_ms(call, repeats: int = LATENCY_CALLS) -> float:
    call()  # warm caches and lazy imports
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(frame, truth, classifier: str, seed: int) -> dict[str, float]:
    trained = train_model(frame, seed, classifier=classifier)
    pipeline, features = trained.pipeline, trained.features
    one_row, hundred_rows = trained.val.head(1)[features], trained.val.head(100)[features]
    preprocess, model = pipeline.named_steps["preprocess"], pipeline.named_steps["classifier"]
    encoded_one, encoded_hundred = preprocess.transform(one_row), preprocess.transform(hundred_rows)
    return {
        "val_auc": trained.metrics["val_auc"],
        "best_auc": best_achievable_auc(truth, trained.val),
        "val_f1": trained.metrics["val_f1"],
        "fit_s": trained.metrics["train_seconds"],
        "pipe_1_ms": median_ms(lambda: pipeline.predict_proba(one_row)),
        "pipe_100_ms": median_ms(lambda: pipeline.predict_proba(hundred_rows), repeats=50),
        "raw_1_ms": median_ms(lambda: model.predict_proba(encoded_one)),
        "raw_100_ms": median_ms(lambda: model.predict_proba(encoded_hundred), repeats=50),
    }


def table_row(label: str, seed: str, r: dict[str, float]) -> str:
    return (
        f"{label:<14}{seed:>6}{r['val_auc']:>9.4f}{r['best_auc']:>8.4f}{r['val_auc'] / r['best_auc']:>7.3f}"
        f"{r['val_f1']:>7.3f}{r['fit_s']:>8.2f}{r['pipe_1_ms']:>11.2f}{r['pipe_100_ms']:>13.2f}"
        f"{r['raw_1_ms']:>10.2f}{r['raw_100_ms']:>12.2f}"
    )


def main() -> None:
    spec = DropSpec(month=0)
    tables, truth = build_drop(spec)
    frame = frame_from_tables(tables, spec.as_of)
    print(f"bench_models: month_000, {len(frame)} users, seeds {SEEDS}; machine: {machine()}")
    header = (
        f"{'model':<14}{'seed':>6}{'val_auc':>9}{'best':>8}{'ratio':>7}{'f1':>7}{'fit s':>8}"
        f"{'pipe 1 ms':>11}{'pipe 100 ms':>13}{'raw 1 ms':>10}{'raw 100 ms':>12}"
    )
    print(header)
    summary = {}
    for classifier in CLASSIFIERS:
        rows = [measure(frame, truth, classifier, seed) for seed in SEEDS]
        for seed, r in zip(SEEDS, rows, strict=True):
            print(table_row(classifier, str(seed), r))
        summary[classifier] = {key: statistics.mean(r[key] for r in rows) for key in rows[0]}
    print("mean over seeds (best = AUC of the true probabilities on the same rows; ratio = val_auc / best):")
    for classifier, r in summary.items():
        print(table_row(classifier, "mean", r))


if __name__ == "__main__":
    main()
