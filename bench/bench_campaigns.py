"""Retention economics (issue 28): which ranking covers more revenue, does the measurement recover a
known effect, and how large a control arm a team needs.

On generated months (7,043 users, no warehouse needed), a champion trained on month_000 (as
`streamflow_train` does) scores month_001, the platform's rules pick and split the list, and
month_002 is generated with the campaign's effect, the way `generate --treatment-effect` does:

1. **Rankings.** The top 500 by expected loss (probability x fee x 12) against the top 500 by
   probability: the expected loss each covers by the model's probabilities and by the true ones
   (`_truth.csv`), and the list's mean fee and mean probability.
2. **Recovered effect.** Over several generator seeds, with an effect of 0.3 (a reached user's
   churn probability x 0.7) and with none: the measured difference (treated - control churn) and
   its 95% interval against the true intent-to-treat difference; then 60 more seeds with the true
   probabilities as the model's (no training: fast) for the measurement's bias and coverage.
3. **Control share.** For lists of 500 to 5,000 users and control shares of 5-50%: the interval's
   half-width and the power to detect a 20% reduction (interval entirely below zero), over 4,000
   simulated campaigns at the control churn rate part 2 measured.

Run: `python -m bench campaigns` (or `make bench`).
"""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd

from bench.harness import machine
from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_NAMES, LABEL
from streamflow_mlops.model.training import frame_from_tables, train_model
from streamflow_mlops.monitoring.campaigns import TREATMENT, arms, campaign_outcome, difference_interval
from streamflow_mlops.synthetic.generate import DropSpec, build_drop, default_drift

USERS = 7043
TOP_K = 500
SHARE = 0.1
HORIZON = 12.0
SEEDS = tuple(range(1, 21))
MORE_SEEDS = tuple(range(21, 81))
EFFECT = 0.3
FEATURES = list(FEATURE_NAMES)


def scored_month(seed: int) -> pd.DataFrame:
    """month_001 scored by a champion trained on month_000: user_id, probability, true probability, fee."""
    frames = {}
    truths = {}
    for month in (0, 1):
        spec = DropSpec(month, users=USERS, seed=seed, drift=default_drift(month))
        tables, truths[month] = build_drop(spec)
        frames[month] = frame_from_tables(tables, spec.as_of)
    champion = train_model(frames[0], seed=seed)
    month = frames[1]
    return pd.DataFrame(
        {
            ENTITY: month[ENTITY].to_numpy(),
            "probability": champion.pipeline.predict_proba(month[FEATURES])[:, 1],
            "true_probability": truths[1].set_index(ENTITY).loc[month[ENTITY], "churn_probability"].to_numpy(),
            "monthly_fee": month["monthly_fee"].to_numpy(),
        }
    )


def top(scored: pd.DataFrame, column: str) -> pd.DataFrame:
    # Ties by user_id, as Postgres ranks them.
    return scored.sort_values([column, ENTITY], ascending=[False, True], kind="stable").head(TOP_K)


def rankings(scored: pd.DataFrame) -> dict[str, dict[str, float]]:
    scored = scored.assign(
        expected_loss=scored["probability"] * scored["monthly_fee"] * HORIZON,
        true_loss=scored["true_probability"] * scored["monthly_fee"] * HORIZON,
    )
    out = {}
    for rank_by, column in (("expected_loss", "expected_loss"), ("probability", "probability")):
        listed = top(scored, column)
        out[rank_by] = {
            "model_loss": float(listed["expected_loss"].sum()),
            "true_loss": float(listed["true_loss"].sum()),
            "fee": float(listed["monthly_fee"].mean()),
            "probability": float(listed["true_probability"].mean()),
        }
    out["overlap"] = {
        "users": float(len(set(top(scored, "expected_loss")[ENTITY]) & set(top(scored, "probability")[ENTITY])))
    }
    return out


def true_scored_month(seed: int) -> pd.DataFrame:
    """month_001 with its true churn probabilities as the model's (a perfectly calibrated model)."""
    tables, truth = build_drop(DropSpec(1, users=USERS, seed=seed, drift=default_drift(1)))
    truth = truth.set_index(ENTITY)["churn_probability"]
    fee = tables["subscriptions"].set_index(ENTITY)["monthly_fee"]
    return pd.DataFrame(
        {
            ENTITY: truth.index.to_numpy(),
            "probability": truth.to_numpy(),
            "true_probability": truth.to_numpy(),
            "monthly_fee": fee.loc[truth.index].to_numpy(),
        }
    )


def campaign(seed: int, scored: pd.DataFrame, effect: float) -> dict[str, float]:
    """The default campaign on month_001 (top 500 by expected loss, 10% control), month_002 with `effect`."""
    listed = top(scored.assign(expected_loss=scored["probability"] * scored["monthly_fee"] * HORIZON), "expected_loss")
    targeted = listed[ENTITY].tolist()
    arm = np.array(arms(targeted, Month(1), SHARE))
    reached = [u for u, a in zip(targeted, arm, strict=True) if a == TREATMENT]
    spec = DropSpec(2, users=USERS, seed=seed, treatment_effect=effect)
    tables, truth = build_drop(spec, reached=reached)
    untreated = build_drop(DropSpec(2, users=USERS, seed=seed))[1].set_index(ENTITY)["churn_probability"]
    labels = tables["labels"].set_index(ENTITY)[LABEL]
    outcome = campaign_outcome(
        arm, labels.loc[targeted].to_numpy(), listed["probability"].to_numpy(), listed["monthly_fee"].to_numpy(),
        HORIZON,
    )  # fmt: skip
    treated_truth = truth.set_index(ENTITY).loc[reached, "churn_probability"]
    outcome["true_difference"] = float(treated_truth.mean() - untreated.loc[reached].mean())
    return outcome


def power(top_k: int, share: float, p_control: float, reduction: float, runs: int = 4000) -> tuple[float, float]:
    """(mean half-width, share of campaigns whose interval lies below zero) for a `reduction` of churn."""
    rng = np.random.default_rng(0)
    control = max(1, round(top_k * share))
    treated = top_k - control
    c_t = rng.binomial(treated, p_control * (1 - reduction), runs)
    c_c = rng.binomial(control, p_control, runs)
    intervals = [difference_interval(a, treated, b, control)[1:] for a, b in zip(c_t, c_c, strict=True)]
    return (
        statistics.fmean((high - low) / 2 for low, high in intervals),
        float(np.mean([high < 0 for _, high in intervals])),
    )


def main() -> None:
    print(f"machine: {machine()}")
    print(f"\n1. rankings: top {TOP_K} of month_001 ({USERS:,} users), champion trained on month_000, horizon 12")
    covered = {"expected_loss": [], "probability": []}
    seeds_scored = {}
    for seed in SEEDS:
        scored = seeds_scored[seed] = scored_month(seed)
        result = rankings(scored)
        for rank_by in covered:
            covered[rank_by].append(result[rank_by])
        gain = result["expected_loss"]["true_loss"] / result["probability"]["true_loss"] - 1
        print(
            f"  seed {seed}: true expected loss covered {result['expected_loss']['true_loss']:,.0f} by expected loss "
            f"vs {result['probability']['true_loss']:,.0f} by probability ({gain:+.1%}); model's figures "
            f"{result['expected_loss']['model_loss']:,.0f} vs {result['probability']['model_loss']:,.0f}; "
            f"{result['overlap']['users']:.0f} users on both lists"
        )
    for rank_by, rows in covered.items():
        print(
            f"  by {rank_by}: mean true expected loss {statistics.fmean(r['true_loss'] for r in rows):,.0f}, "
            f"mean fee {statistics.fmean(r['fee'] for r in rows):.2f}, "
            f"mean true probability {statistics.fmean(r['probability'] for r in rows):.3f}"
        )

    print(f"\n2. recovered effect: top {TOP_K} by expected loss, control share {SHARE}, month_002 with the effect")
    control_rates = []
    for effect in (EFFECT, 0.0):
        inside = 0
        errors = []
        for seed in SEEDS:
            outcome = campaign(seed, seeds_scored[seed], effect)
            covered_truth = outcome["difference_low"] <= outcome["true_difference"] <= outcome["difference_high"]
            inside += covered_truth
            errors.append(outcome["difference"] - outcome["true_difference"])
            control_rates.append(outcome["control_churn_rate"])
            print(
                f"  effect {effect}, seed {seed}: measured {outcome['difference']:+.3f} "
                f"[{outcome['difference_low']:+.3f}, {outcome['difference_high']:+.3f}] "
                f"(n={outcome['treated_users']}/{outcome['control_users']}), true {outcome['true_difference']:+.3f}"
                f"{'' if covered_truth else '  <- outside'}; revenue saved {outcome['revenue_saved']:,.0f}"
            )
        print(
            f"  effect {effect}: the interval holds the true difference in {inside} of {len(SEEDS)} seeds; "
            f"measured - true: mean {statistics.fmean(errors):+.3f}, sd {statistics.stdev(errors):.3f}"
        )

    print(f"  {len(MORE_SEEDS)} more seeds ({MORE_SEEDS[0]}-{MORE_SEEDS[-1]}), the true probabilities as the model's:")
    for effect in (EFFECT, 0.0):
        outcomes = [campaign(seed, true_scored_month(seed), effect) for seed in MORE_SEEDS]
        errors = [o["difference"] - o["true_difference"] for o in outcomes]
        inside = sum(o["difference_low"] <= o["true_difference"] <= o["difference_high"] for o in outcomes)
        below = sum(o["difference_high"] < 0 for o in outcomes)
        print(
            f"  effect {effect}: measured - true mean {statistics.fmean(errors):+.4f} "
            f"(standard error {statistics.stdev(errors) / len(errors) ** 0.5:.4f}), the interval holds the true "
            f"difference in {inside} of {len(outcomes)}, lies below zero in {below}"
        )

    p_control = statistics.fmean(control_rates)
    print(
        "\n3. control share: half-width of the 95% interval and power for a 20% reduction "
        f"(control churn {p_control:.3f})"
    )
    for top_k in (500, 1000, 2000, 5000):
        cells = []
        needed = None
        for share in (0.05, 0.1, 0.2, 0.3, 0.5):
            half, detected = power(top_k, share, p_control, 0.2)
            cells.append(f"{share:.0%}: +-{half:.3f} / {detected:.0%}")
            if needed is None and detected >= 0.8:
                needed = share
        verdict = f"80% power from a {needed:.0%} control" if needed else "no share reaches 80% power"
        print(f"  top {top_k}: " + ", ".join(cells) + f"  -> {verdict}")


if __name__ == "__main__":
    main()
