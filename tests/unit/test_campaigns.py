"""Issue 28's rules: the control arm's hash split, the difference's interval, and the measurement on
simulated campaigns (the generator's own treatment effect), with and without an effect."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL
from streamflow_mlops.monitoring.campaigns import (
    CONTROL,
    CONTROL_SALT,
    TREATMENT,
    arms,
    campaign_outcome,
    control_bucket,
    control_threshold,
    describe_outcome,
    difference_interval,
    wilson_interval,
)
from streamflow_mlops.synthetic.generate import DropSpec, build_drop, reached_users, user_ids

HORIZON = 12.0


def ids(n: int, seed: int = 0) -> list[str]:
    return user_ids(n, np.random.default_rng(seed)).tolist()


def test_the_split_is_stable_and_depends_on_the_user_and_the_month_only():
    users = ids(5000)
    first = arms(users, Month(3), 0.1)
    assert arms(users, Month(3), 0.1) == first
    # A user's arm does not depend on who else is on the list (a new champion reorders the list).
    reordered = list(reversed(users[:2000]))
    assert arms(reordered, Month(3), 0.1) == list(reversed(first[:2000]))
    # The next month draws afresh: nobody is held back every month by construction.
    following = arms(users, Month(4), 0.1)
    overlap = sum(a == b == CONTROL for a, b in zip(first, following, strict=True))
    assert overlap < 0.02 * len(users)
    assert following != first


def test_the_bucket_is_the_first_60_bits_of_the_salted_md5():
    digest = hashlib.md5(f"7590-VHVEG:month_001:{CONTROL_SALT}".encode()).hexdigest()
    assert control_bucket("7590-VHVEG", Month(1)) == int(digest[:15], 16)
    assert control_threshold(0.1) == math.floor(0.1 * 2**60)
    with pytest.raises(ValueError):
        control_threshold(1.0)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.25, 0.5])
def test_the_control_share_is_the_parameter_within_binomial_noise(share):
    n = 40_000
    control = sum(a == CONTROL for a in arms(ids(n, seed=1), Month(2), share))
    sd = math.sqrt(n * share * (1 - share))
    assert abs(control - n * share) < 4 * sd
    assert arms(ids(100), Month(2), 0.0) == [TREATMENT] * 100


def test_the_split_is_independent_of_the_evaluation_holdout():
    from streamflow_mlops.config.holdout import is_eval_holdout

    users = ids(40_000, seed=2)
    control = np.array([a == CONTROL for a in arms(users, Month(1), 0.1)])
    holdout = is_eval_holdout(users)
    # Independent splits: the control share is the same inside and outside the holdout.
    assert abs(control[holdout].mean() - control[~holdout].mean()) < 0.012


def test_wilson_and_newcombe_match_published_values():
    # Newcombe (1998), table II, example (a): 56/70 vs 48/80 -> 0.2000, 95% CI 0.0524 to 0.3339.
    difference, low, high = difference_interval(56, 70, 48, 80)
    assert difference == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    # Example (c): 5/56 vs 0/29 -> 0.0893, CI -0.0381 to 0.1926.
    assert difference_interval(5, 56, 0, 29)[1:] == pytest.approx((-0.0381, 0.1926), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("treated", "control", "p_control", "effect"), [(450, 50, 0.6, 0.3), (4500, 500, 0.3, 0.0)])
def test_the_interval_covers_the_true_difference_at_its_nominal_rate(treated, control, p_control, effect):
    rng = np.random.default_rng(7)
    p_treated = p_control * (1 - effect)
    truth = p_treated - p_control
    runs = 4000
    c_t = rng.binomial(treated, p_treated, runs)
    c_c = rng.binomial(control, p_control, runs)
    covered = [
        low <= truth <= high
        for low, high in (difference_interval(a, treated, b, control)[1:] for a, b in zip(c_t, c_c, strict=True))
    ]
    # 95% nominal; 4,000 runs put the estimate within +-0.007 (2 sd) of the true coverage.
    assert 0.935 <= np.mean(covered) <= 0.97


def simulated_campaign(
    seed: int, effect: float, users: int = 20_000, top_k: int = 4000, reach: float = 1.0, label_lag: int = 0
):
    """A campaign the way the platform runs one, on generated months: month_000's true churn
    probabilities ranked by expected loss, the top `top_k` split by the hash, the treatment arm
    reached (a share `reach` of it), month_001 generated with the treatment effect on them (its
    labels: the period after its own as_of, or with `label_lag` 1 the period after month_000's)."""
    month0, truth0 = build_drop(DropSpec(0, users=users, seed=seed))
    fee = month0["subscriptions"].set_index(ENTITY)["monthly_fee"]
    probability = truth0.set_index(ENTITY)["churn_probability"]
    loss = (probability * fee * HORIZON).sort_values(ascending=False, kind="stable")
    targeted = loss.index[:top_k].tolist()
    arm = np.array(arms(targeted, Month(0), 0.1))
    contact_list = [u for u, a in zip(targeted, arm, strict=True) if a == TREATMENT]
    reached = reached_users(contact_list, reach, seed, 1)
    spec = DropSpec(1, users=users, seed=seed, treatment_effect=effect, label_lag=label_lag)
    month1, truth1 = build_drop(spec, reached=reached)
    labels = month1["labels"].set_index(ENTITY)[LABEL]
    outcome = campaign_outcome(
        arm,
        labels.loc[targeted].to_numpy(),
        probability.loc[targeted].to_numpy(),
        fee.loc[targeted].to_numpy(),
        HORIZON,
        reached=np.isin(targeted, reached),
    )
    # The true intent-to-treat difference: the treated arm's probabilities with and without the effect.
    untreated = build_drop(DropSpec(1, users=users, seed=seed, label_lag=label_lag))[1].set_index(ENTITY)
    untreated = untreated["churn_probability"]
    treated_ids = [u for u, a in zip(targeted, arm, strict=True) if a == TREATMENT]
    true_difference = float(truth1.set_index(ENTITY)["churn_probability"].loc[treated_ids].mean()) - float(
        untreated.loc[treated_ids].mean()
    )
    return outcome, true_difference, month1


@pytest.mark.parametrize("label_lag", [0, 1])
def test_the_measurement_recovers_a_known_effect_within_its_interval(label_lag):
    outcome, true_difference, month1 = simulated_campaign(seed=11, effect=0.3, label_lag=label_lag)
    assert true_difference < -0.1
    assert outcome["difference_low"] <= true_difference <= outcome["difference_high"]
    assert outcome["difference_high"] < 0, "a 30% reduction on 4,000 targeted users is detected"
    assert outcome["revenue_saved_low"] > 0 and outcome["churners_saved"] > 0
    assert outcome["reach_rate"] == 1.0 and outcome["effect_on_reached"] == outcome["difference"]
    assert len(month1["contacts"]) == outcome["treated_users"]
    assert "campaign month_000" in describe_outcome(Month(0), outcome)
    if label_lag:
        # The labels of the period the scores predict: the untouched control arm shows the model's
        # calibration (here the true probabilities: 400 users, sd of the rate ~0.024).
        assert abs(outcome["control_mean_probability"] - outcome["control_churn_rate"]) < 0.06
    else:
        # Without a lag the outcome is the next period's churn: the top of one month regresses to
        # the mean by the next (behaviour is redrawn), so the control churns less than predicted.
        assert outcome["control_churn_rate"] < outcome["control_mean_probability"]


def test_the_measurement_recovers_zero_when_there_is_no_effect():
    outcome, true_difference, _ = simulated_campaign(seed=12, effect=0.0)
    assert true_difference == 0.0
    assert outcome["difference_low"] <= 0.0 <= outcome["difference_high"]


def test_partial_reach_dilutes_the_difference_and_the_effect_on_the_reached_undoes_it():
    outcome, true_difference, month1 = simulated_campaign(seed=13, effect=0.4, reach=0.5)
    assert 0.45 < outcome["reach_rate"] < 0.55
    assert outcome["reached_users"] == len(month1["contacts"])
    assert outcome["difference_low"] <= true_difference <= outcome["difference_high"]
    assert outcome["effect_on_reached"] == pytest.approx(outcome["difference"] / outcome["reach_rate"])
