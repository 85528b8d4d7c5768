"""Is the model judged honestly? Overlap bias, realized vs validation AUC, and which months each gate retrains on.

On generated months (7,043 users, no warehouse needed), over several generator seeds:

1. **Overlap bias of the old scheme.** The old champion (random 80/20 split of month_000) scored
   on a later month's random validation split: AUC on the users it had trained on vs the users it
   had not, and how much the mix inflated its AUC against a challenger.
2. **Realized vs validation AUC.** A champion trained on month_000 (evaluation holdout, CV
   threshold) scored on every row of later months: the default drifted month_001, undrifted
   months 2-4, and a month_001 whose only change is a 15% fee rise. The spread on undrifted
   months is what the decay threshold must stay above.
3. **Gates over a run of months.** Month by month, Evidently's drift share against the champion's
   training month and the decay rule on realized AUC; a retrain trains a challenger and promotes
   it by `should_promote` on the held-out users' rows.

Run: `python -m bench.bench_honest` (or `make bench`).
"""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bench.harness import machine
from streamflow_mlops.config.holdout import is_eval_holdout
from streamflow_mlops.config.schema import ENTITY, FEATURE_NAMES, LABEL
from streamflow_mlops.model.promotion import paired_bootstrap_auc_gain, should_promote
from streamflow_mlops.model.training import build_pipeline, frame_from_tables, split_frame, train_model
from streamflow_mlops.monitoring.drift import DEFAULT_DRIFT_THRESHOLD, RETRAIN, compute_drift, drift_gate
from streamflow_mlops.monitoring.performance import DEFAULT_DECAY_THRESHOLD, decay_gate, realized_metrics
from streamflow_mlops.synthetic.generate import Drift, DropSpec, build_drop, default_drift

SEEDS = (1, 2, 3, 4, 5)
GATE_SEEDS = (1, 2, 3)
USERS = 7043
FEE_RISE = Drift(fee_rise=0.15)
FEATURES = list(FEATURE_NAMES)
_FRAMES: dict[tuple[int, int, Drift], pd.DataFrame] = {}


def month_frame(month: int, seed: int, drift: Drift | None = None) -> pd.DataFrame:
    drift = default_drift(month) if drift is None else drift
    key = (month, seed, drift)
    if key not in _FRAMES:
        spec = DropSpec(month, users=USERS, seed=seed, drift=drift)
        tables, _ = build_drop(spec)
        _FRAMES[key] = frame_from_tables(tables, spec.as_of)
    return _FRAMES[key]


def auc(rows: pd.DataFrame, scores: np.ndarray) -> float:
    return float(roc_auc_score(rows[LABEL], scores))


def overlap_bias(seed: int, classifier: str, month: int) -> dict[str, float]:
    """The old scheme: champion on a random split of month_000, challenger rows a random split of `month`."""
    champion_train, _ = split_frame(month_frame(0, seed), seed)
    champion = build_pipeline(classifier, seed).fit(champion_train[FEATURES], champion_train[LABEL])
    _, val = split_frame(month_frame(month, seed), seed)
    seen = val[ENTITY].isin(set(champion_train[ENTITY])).to_numpy()
    scores = champion.predict_proba(val[FEATURES])[:, 1]
    every = month_frame(month, seed)
    every_seen = every[ENTITY].isin(set(champion_train[ENTITY])).to_numpy()
    every_scores = champion.predict_proba(every[FEATURES])[:, 1]
    return {
        "seen_share": float(seen.mean()),
        "val_seen": auc(val[seen], scores[seen]),
        "val_unseen": auc(val[~seen], scores[~seen]),
        "val_all": auc(val, scores),
        "all_seen": auc(every[every_seen], every_scores[every_seen]),
        "all_unseen": auc(every[~every_seen], every_scores[~every_seen]),
    }


def print_overlap_bias() -> None:
    print("\n1. overlap bias of the old random split (champion trained on a random 80% of month_000)")
    print(
        f"{'model':<14}{'month':>7}{'seed':>6}{'seen':>7}{'val seen':>10}{'val unseen':>12}{'bias':>8}"
        f"{'all seen':>10}{'all unseen':>12}{'bias':>8}"
    )
    for classifier in ("spline_logreg", "hgb"):
        for month in (1, 2):
            rows = [overlap_bias(seed, classifier, month) for seed in SEEDS]
            for seed, r in zip(SEEDS, rows, strict=True):
                print(
                    f"{classifier:<14}{month:>7}{seed:>6}{r['seen_share']:>7.2f}{r['val_seen']:>10.4f}"
                    f"{r['val_unseen']:>12.4f}{r['val_seen'] - r['val_unseen']:>+8.4f}{r['all_seen']:>10.4f}"
                    f"{r['all_unseen']:>12.4f}{r['all_seen'] - r['all_unseen']:>+8.4f}"
                )
            val_bias = [r["val_seen"] - r["val_unseen"] for r in rows]
            all_bias = [r["all_seen"] - r["all_unseen"] for r in rows]
            inflation = [r["val_all"] - r["val_unseen"] for r in rows]
            print(
                f"{classifier:<14}{month:>7}{'mean':>6}  bias on the validation split {statistics.mean(val_bias):+.4f} "
                f"(sd {statistics.stdev(val_bias):.4f}), on all rows {statistics.mean(all_bias):+.4f} "
                f"(sd {statistics.stdev(all_bias):.4f}); champion AUC inflated by {statistics.mean(inflation):+.4f}"
            )


def print_realized_vs_validation() -> dict[str, list[float]]:
    print("\n2. realized vs validation AUC (champion trained on month_000 with the evaluation holdout)")
    cases = {
        "month_001 drift": (1, None),
        "month_001 fee+15%": (1, FEE_RISE),
        "month_002": (2, Drift()),
        "month_003": (3, Drift()),
        "month_004": (4, Drift()),
    }
    print(
        f"{'seed':>5}{'val_auc':>9}  "
        + "".join(f"{name:>19}" for name in cases)
        + "   (realized AUC all rows / loss = validation - realized)"
    )
    losses: dict[str, list[float]] = {name: [] for name in cases}
    briers: dict[str, list[float]] = {name: [] for name in cases}
    realized: dict[str, list[float]] = {name: [] for name in cases}
    holdout_losses: list[float] = []
    for seed in SEEDS:
        champion = train_model(month_frame(0, seed), seed)
        val_auc = champion.metrics["val_auc"]
        cells = []
        for name, (month, drift) in cases.items():
            frame = month_frame(month, seed, drift)
            scores = champion.pipeline.predict_proba(frame[FEATURES])[:, 1]
            metrics = realized_metrics(frame[LABEL].to_numpy(), scores)
            losses[name].append(val_auc - metrics["auc"])
            briers[name].append(metrics["brier"])
            realized[name].append(metrics["auc"])
            if drift == Drift():
                held = is_eval_holdout(frame[ENTITY])
                holdout_losses.append(val_auc - auc(frame[held], scores[held]))
            cells.append(f"{metrics['auc']:.4f} {val_auc - metrics['auc']:+.4f}")
        print(f"{seed:>5}{val_auc:>9.4f}  " + "".join(f"{c:>19}" for c in cells))
    undrifted = [x for name in ("month_002", "month_003", "month_004") for x in losses[name]]
    print(
        f"undrifted months: loss mean {statistics.mean(undrifted):+.4f}, sd {statistics.stdev(undrifted):.4f}, "
        f"worst {max(undrifted):+.4f}; on held-out users only: mean {statistics.mean(holdout_losses):+.4f}, "
        f"worst {max(holdout_losses):+.4f}"
    )
    for name in ("month_001 drift", "month_001 fee+15%"):
        # The same champion's realized AUC on the undrifted month_002: the harm without validation noise.
        harm = [a - b for a, b in zip(realized["month_002"], realized[name], strict=True)]
        print(
            f"{name}: loss {min(losses[name]):+.4f} to {max(losses[name]):+.4f} "
            f"(mean {statistics.mean(losses[name]):+.4f}); "
            f"realized AUC below month_002's by {min(harm):+.4f} to {max(harm):+.4f}; Brier "
            f"{statistics.mean(briers[name]):.4f} vs {statistics.mean(briers['month_002']):.4f} on month_002"
        )
    print(f"decay threshold (default): {DEFAULT_DECAY_THRESHOLD}")
    return losses


def run_gates(seed: int, drifts: dict[int, Drift], months: int) -> list[str]:
    """Month by month: both gates against the current champion; a retrain trains and may promote."""
    champion = train_model(month_frame(0, seed, drifts.get(0)), seed)
    champion_month = 0
    lines = []
    for month in range(1, months):
        frame = month_frame(month, seed, drifts.get(month, Drift()))
        reference = month_frame(champion_month, seed, drifts.get(champion_month, Drift()))
        share = compute_drift(reference, frame, feature_names=FEATURES).drift_share
        drift_decision, _ = drift_gate(share, DEFAULT_DRIFT_THRESHOLD, True)
        scores = champion.pipeline.predict_proba(frame[FEATURES])[:, 1]
        realized = realized_metrics(frame[LABEL].to_numpy(), scores)["auc"]
        validation = champion.metrics["val_auc"]
        decay_decision, _ = decay_gate(realized, validation, DEFAULT_DECAY_THRESHOLD)
        promoted = ""
        if RETRAIN in (drift_decision, decay_decision):
            challenger = train_model(frame, seed)
            labels = challenger.val.column(LABEL)
            incumbent = champion.pipeline.predict_proba(challenger.val.frame(FEATURES))[:, 1]
            bootstrap = paired_bootstrap_auc_gain(labels, challenger.val_scores, incumbent, seed=seed)
            incumbent_auc = auc(challenger.val.frame(), incumbent)
            decision = should_promote(challenger.metrics["val_auc"], incumbent_auc, 0.005, bootstrap)
            promoted = (
                f"promote (gain {bootstrap.gain:+.4f})" if decision.promote else f"keep (gain {bootstrap.gain:+.4f})"
            )
            if decision.promote:
                champion, champion_month = challenger, month
        lines.append(
            f"{seed:>5}{month:>6}{share:>8.3f}{drift_decision:>9}{realized:>9.4f}{validation:>9.4f}"
            f"{decay_decision:>9}  {promoted}"
        )
    return lines


def print_gates() -> None:
    scenarios = {
        "default layout (month_001 drifted)": {1: default_drift(1)},
        "fee rise alone at month_003": {3: FEE_RISE},
    }
    for title, drifts in scenarios.items():
        print(
            f"\n3. gates, {title}: drift threshold {DEFAULT_DRIFT_THRESHOLD}, decay threshold {DEFAULT_DECAY_THRESHOLD}"
        )
        print(f"{'seed':>5}{'month':>6}{'drift':>8}{'gate':>9}{'real AUC':>9}{'champ val':>9}{'decay':>9}  retrain")
        for seed in GATE_SEEDS:
            for line in run_gates(seed, drifts, months=6):
                print(line)


def main() -> None:
    print(f"bench_honest: {USERS} users, seeds {SEEDS}; machine: {machine()}")
    print_overlap_bias()
    print_realized_vs_validation()
    print_gates()


if __name__ == "__main__":
    main()
