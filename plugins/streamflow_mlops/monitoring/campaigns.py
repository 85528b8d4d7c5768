"""Retention campaigns: the control arm, and whether contacting people changed anything.

Pure rules, no I/O (the edge that writes `retention_campaigns` and `campaign_outcomes` is
`pipelines/campaigns.py`):

* **The control arm.** Each month the targeted users (the top `top_k` by `rank_by`) are split by a
  salted md5 of `(user_id, month)`: a user is `control` when the first 60 bits of
  `md5("<user_id>:<month>:<CONTROL_SALT>")` are below `control_share * 2**60`, else `treatment`.
  A user's arm depends on nothing but their id and the month, so a re-run (or a new champion that
  keeps them in the list) puts them in the same arm; the next month draws afresh, so nobody is
  held back every month. The share is `control_share` in expectation (binomial: 50 +- 7 of 500 at
  0.1); the salt keeps the split independent of the evaluation holdout (blake2b of the id) and of
  the md5 drift sample (md5 of the id alone). Postgres computes the same bits (`control_sql`), so
  a 10M-user month is split where it is ranked.
* **The outcome.** Churn of the treatment arm against the control arm, among targeted users only
  (intent to treat: the arms are random halves of the same list, so their difference is the
  campaign's effect whoever was actually reached); the difference with Newcombe's hybrid score
  interval (Wilson intervals of each rate combined, "method 10" of Newcombe 1998: close to its
  nominal coverage down to a few dozen users an arm, where the Wald interval is too narrow); the
  revenue saved, `-difference x (treated users' monthly fees) x horizon`; and the model's
  calibration on the control arm, the only targeted users whose outcome the campaign did not change.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from statistics import NormalDist
from typing import TYPE_CHECKING

from streamflow_mlops.config.months import Month

if TYPE_CHECKING:
    import numpy as np

# The DAG files read the defaults below at parse time: this module imports the standard library only.
TREATMENT, CONTROL = "treatment", "control"
ARMS = (TREATMENT, CONTROL)
# A retention team calls or mails a few hundred subscribers a month; 500 is about 7% of a
# 7,043-user month, inside its top decile, and a list a team can work through in a month.
DEFAULT_TOP_K = 500
RANK_BY = ("expected_loss", "probability")
# The churn_scores rank each `rank_by` targets by.
RANK_COLUMN = {"expected_loss": "loss_rank", "probability": "rank"}
# Rank by expected loss: with an effect proportional to the churn probability (a call takes a
# share of the risk away, as the generator's --treatment-effect does), a contact saves
# effect x probability x fee x horizon = effect x expected_loss, so the top k by expected loss is
# the list that saves the most revenue; ranking by probability spends calls on cheap plans.
# bench/bench_campaigns.py measures the difference on a generated month (README).
DEFAULT_RANK_BY = "expected_loss"
# 10% of the list held back: on a 500-user list 50 controls, enough to see a large effect and to
# check calibration, for 10% of the list's contacts (bench/bench_campaigns.py: the interval's width
# by share, and the share a 20% reduction needs).
DEFAULT_CONTROL_SHARE = 0.1
CONTROL_SALT = "streamflow-retention-control"
HASH_BITS = 60
CONFIDENCE = 0.95


def control_threshold(share: float) -> int:
    """The integer the 60 hash bits are compared with: `floor(share * 2**60)` (exact in Python)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"control_share must be within [0, 1), got {share}")
    return math.floor(share * 2**HASH_BITS)


def control_bucket(user_id: str, month: Month) -> int:
    """The first 60 bits of `md5("<user_id>:<month name>:<CONTROL_SALT>")`, as a non-negative int."""
    digest = hashlib.md5(f"{user_id}:{month.name}:{CONTROL_SALT}".encode()).hexdigest()
    return int(digest[: HASH_BITS // 4], 16)


def arms(user_ids: Iterable[str], month: Month, share: float = DEFAULT_CONTROL_SHARE) -> list[str]:
    """The arm of each targeted user: `control` when the bucket is below the threshold."""
    threshold = control_threshold(share)
    return [CONTROL if control_bucket(u, month) < threshold else TREATMENT for u in user_ids]


def control_sql(user_id: str = "user_id", month: str = "%(month)s", threshold: str = "%(control_threshold)s") -> str:
    """The same rule as a Postgres boolean expression (parameters: the month, `control_threshold`)."""
    return (
        f"(('x' || substr(md5({user_id} || ':' || {month} || ':{CONTROL_SALT}'), 1, {HASH_BITS // 4}))"
        f"::bit({HASH_BITS})::bigint < {threshold})"
    )


def control_spark_sql(month: str, threshold: int, user_id: str = "user_id") -> str:
    """The same rule as a Spark SQL boolean expression, the month and threshold inlined (pure)."""
    if not month.replace("_", "").isalnum():
        raise ValueError(f"not a month name: {month!r}")
    return (
        f"(CAST(conv(substr(md5(concat({user_id}, ':{month}:{CONTROL_SALT}')), 1, {HASH_BITS // 4}), 16, 10) "
        f"AS BIGINT) < {int(threshold)})"
    )


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for a proportion (0, 1 for an empty sample)."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    churned_treated: int, treated: int, churned_control: int, control: int, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """`(difference, low, high)`: treated churn rate minus control churn rate with Newcombe's
    hybrid score interval (negative = the campaign reduced churn)."""
    if treated == 0 or control == 0:
        raise ValueError("both arms need at least one user with an outcome")
    p1, p2 = churned_treated / treated, churned_control / control
    l1, u1 = wilson_interval(churned_treated, treated, confidence)
    l2, u2 = wilson_interval(churned_control, control, confidence)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return difference, low, high


def campaign_outcome(
    arm: np.ndarray,
    churned: np.ndarray,
    probability: np.ndarray,
    monthly_fee: np.ndarray,
    horizon_months: float,
    reached: np.ndarray | None = None,
    confidence: float = CONFIDENCE,
) -> dict[str, float | int | None]:
    """A campaign month's outcome from its targeted users' arms, outcomes (1 = churned), scores and
    fees; `reached` (who the team actually reached, from `contacts.csv`) adds the reach rate and the
    effect on the reached (the intent-to-treat difference over the reach rate, Bloom's estimator)."""
    import numpy as np

    arm = np.asarray(arm)
    y = np.asarray(churned, dtype=float)
    p = np.asarray(probability, dtype=float)
    fee = np.asarray(monthly_fee, dtype=float)
    treated, control = arm == TREATMENT, arm == CONTROL
    n_t, n_c = int(treated.sum()), int(control.sum())
    c_t, c_c = int(y[treated].sum()), int(y[control].sum())
    difference, low, high = difference_interval(c_t, n_t, c_c, n_c, confidence)
    value = float(fee[treated].sum()) * horizon_months
    control_rate = c_c / n_c
    outcome: dict[str, float | int | None] = {
        "treated_users": n_t,
        "control_users": n_c,
        "treated_churned": c_t,
        "control_churned": c_c,
        "treated_churn_rate": c_t / n_t,
        "control_churn_rate": control_rate,
        "difference": difference,
        "difference_low": low,
        "difference_high": high,
        "confidence": confidence,
        "relative_reduction": None if control_rate == 0 else -difference / control_rate,
        "churners_saved": -difference * n_t,
        "revenue_saved": -difference * value,
        "revenue_saved_low": -high * value,
        "revenue_saved_high": -low * value,
        # Calibration where treatment changed nothing: the control arm's mean score against its churn.
        "control_mean_probability": float(p[control].mean()),
        "control_brier": float(((p[control] - y[control]) ** 2).mean()),
        "treated_mean_probability": float(p[treated].mean()),
        "reached_users": None,
        "reach_rate": None,
        "effect_on_reached": None,
    }
    if reached is not None:
        hit = np.asarray(reached, dtype=bool) & treated
        rate = hit.sum() / n_t
        outcome.update(
            reached_users=int(hit.sum()),
            reach_rate=float(rate),
            effect_on_reached=None if rate == 0 else difference / rate,
        )
    return outcome


def describe_outcome(month: Month, outcome: dict) -> str:
    """One line for logs and the demo summary."""
    reduction = outcome.get("relative_reduction")
    relative = "" if reduction is None else f", {reduction:+.0%} of the control's churn avoided"
    return (
        f"campaign {month}: churn treated {outcome['treated_churn_rate']:.3f} (n={outcome['treated_users']}) vs "
        f"control {outcome['control_churn_rate']:.3f} (n={outcome['control_users']}), difference "
        f"{outcome['difference']:+.3f} [{outcome['confidence']:.0%} CI {outcome['difference_low']:+.3f}, "
        f"{outcome['difference_high']:+.3f}]{relative}; revenue saved {outcome['revenue_saved']:,.0f} "
        f"[{outcome['revenue_saved_low']:,.0f}, {outcome['revenue_saved_high']:,.0f}]; control calibration: "
        f"predicted {outcome['control_mean_probability']:.3f}, observed {outcome['control_churn_rate']:.3f}"
    )
