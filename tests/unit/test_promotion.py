"""The promotion rule and the paired bootstrap (pure functions, no I/O)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from streamflow_mlops.config.months import Month
from streamflow_mlops.model.promotion import (
    BootstrapGain,
    Comparison,
    auc_by_rank,
    month_older_than_champion,
    paired_bootstrap_auc_gain,
    score_gain,
    should_promote,
)


def interval(low: float, high: float) -> BootstrapGain:
    """A bootstrap result with a 90% interval [low, high]."""
    return BootstrapGain(gain=(low + high) / 2, ci_low=low, ci_high=high, confidence=0.9, resamples=1000)


SIGNIFICANT = interval(0.01, 0.03)
NOISY = interval(-0.01, 0.03)


def scored_rows(n: int, seed: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, y * signal + rng.normal(0, 1, n)


def test_no_champion_promotes():
    decision = should_promote(0.71, None, delta=0.005)
    assert decision.promote and "no champion" in decision.reason


@pytest.mark.parametrize("champion_auc", [float("nan"), np.float64("nan")])
def test_unscorable_champion_fails_closed(champion_auc):
    decision = should_promote(0.99, champion_auc, delta=0.005)
    assert not decision.promote and "could not be scored" in decision.reason and "keeping it" in decision.reason


@pytest.mark.parametrize(
    ("challenger_auc", "champion_auc", "delta", "bootstrap", "reason"),
    [
        pytest.param(float("nan"), None, 0.0, None, "", id="challenger without an AUC"),
        pytest.param(0.804, 0.800, 0.005, SIGNIFICANT, "below delta", id="gain below delta, even if significant"),
        pytest.param(0.78, 0.80, 0.0, interval(-0.03, -0.01), "", id="worse challenger"),
        pytest.param(0.83, 0.80, 0.005, NOISY, "includes 0", id="big gain that could be noise"),
        pytest.param(0.83, 0.80, 0.005, None, "", id="gain without a bootstrap"),
    ],
)
def test_the_champion_stays(challenger_auc, champion_auc, delta, bootstrap, reason):
    decision = should_promote(challenger_auc, champion_auc, delta=delta, bootstrap=bootstrap)
    assert not decision.promote and reason in decision.reason


def test_gain_of_exactly_delta_with_significant_bootstrap_promotes():
    # 0.805 - 0.8 is 0.00499999... in floating point; "at least delta" must still hold.
    decision = should_promote(0.805, 0.800, delta=0.005, bootstrap=SIGNIFICANT)
    assert decision.promote and "CI" in decision.reason


def test_auc_by_rank_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.3).astype(int)
    scores = np.round(rng.random(500) + 0.3 * y, 1)  # rounding makes many ties
    assert auc_by_rank(y, scores)[0] == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_bootstrap_is_seeded_and_reports_the_full_sample_gain():
    y, champion = scored_rows(600, seed=2, signal=1.0)
    challenger = champion + y * 0.3
    first = paired_bootstrap_auc_gain(y, challenger, champion, seed=7)
    assert first == paired_bootstrap_auc_gain(y, challenger, champion, seed=7)
    assert first != paired_bootstrap_auc_gain(y, challenger, champion, seed=8)
    assert first.gain == pytest.approx(roc_auc_score(y, challenger) - roc_auc_score(y, champion), abs=1e-12)
    assert first.ci_low <= first.gain <= first.ci_high


def test_identical_models_have_zero_gain_and_are_not_promoted():
    y, scores = scored_rows(400, seed=3, signal=1.0)
    result = paired_bootstrap_auc_gain(y, scores, scores, resamples=200)
    assert result.gain == 0 and result.ci_low == 0 and result.ci_high == 0
    assert not should_promote(0.8, 0.8, delta=0.0, bootstrap=result).promote


def test_clearly_better_model_is_significant():
    y, champion = scored_rows(800, seed=4, signal=0.5)
    challenger = champion + y * 1.0
    result = paired_bootstrap_auc_gain(y, challenger, champion)
    assert result.ci_low > 0.05


def test_tiny_gain_from_noise_is_not_significant():
    """Two models that are the same signal plus independent noise: this draw gives the challenger
    a gain above delta, but the interval straddles zero, so the champion stays."""
    rng = np.random.default_rng(2)
    y = (rng.random(300) < 0.3).astype(int)
    signal = y * 1.0 + rng.normal(0, 1, 300)
    champion = signal + rng.normal(0, 0.5, 300)
    challenger = signal + rng.normal(0, 0.5, 300)
    result = paired_bootstrap_auc_gain(y, challenger, champion, seed=0)
    assert 0.005 <= result.gain < 0.02
    assert result.ci_low < 0 < result.ci_high
    decision = should_promote(roc_auc_score(y, challenger), roc_auc_score(y, champion), delta=0.005, bootstrap=result)
    assert not decision.promote and "noise" in decision.reason


def test_pairing_detects_a_small_consistent_gain_that_unpaired_noise_would_hide():
    """Both models share the same hard rows; the challenger is better on every positive by a
    small margin. Paired resampling cancels the shared noise and sees the gain as real."""
    y, champion = scored_rows(1500, seed=6, signal=1.0)
    challenger = champion + y * 0.08
    result = paired_bootstrap_auc_gain(y, challenger, champion)
    assert 0 < result.gain < 0.03
    assert result.ci_low > 0


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_auc_gain(np.array([0, 1]), np.array([0.1, 0.9]), np.array([0.5]))
    with pytest.raises(ValueError, match="both classes"):
        paired_bootstrap_auc_gain(np.array([1, 1]), np.array([0.1, 0.9]), np.array([0.5, 0.4]))


def test_interval_is_finite():
    y, scores = scored_rows(200, seed=9, signal=1.0)
    result = paired_bootstrap_auc_gain(y, scores + y * 0.1, scores, resamples=100)
    assert math.isfinite(result.ci_low) and math.isfinite(result.ci_high)


@pytest.mark.slow
def test_beyond_max_rows_the_rescaled_interval_is_the_full_bootstrap_one():
    rng = np.random.default_rng(5)
    y = (rng.random(60_000) < 0.26).astype(int)
    champion = y * 0.8 + rng.normal(size=y.size)
    challenger = champion + y * 0.05 + rng.normal(scale=0.3, size=y.size)
    full = paired_bootstrap_auc_gain(y, challenger, champion, resamples=300, seed=1)
    drawn = paired_bootstrap_auc_gain(y, challenger, champion, resamples=300, seed=1, max_rows=6_000)
    assert drawn.gain == full.gain
    width, drawn_width = full.ci_high - full.ci_low, drawn.ci_high - drawn.ci_low
    # Drawing 6,000 rows, unscaled, the interval would be sqrt(10) ~ 3.2 times as wide.
    assert 0.75 < drawn_width / width < 1.33
    assert abs((drawn.ci_low + drawn.ci_high) / 2 - (full.ci_low + full.ci_high) / 2) < width / 4


def comparison(**changes):
    facts = {
        "version": "3",
        "month": Month(2),
        "delta": 0.005,
        "challenger_auc": 0.83,
        "champion_version": "2",
        "champion_auc": 0.80,
        "bootstrap": SIGNIFICANT,
        "eval_population": "holdout-20%:month_002",
        "eval_rows": 1400,
    }
    champion_month = changes.pop("champion_month", Month(1))
    force = changes.pop("force", False)
    return Comparison.decide(champion_month=champion_month, force=force, **{**facts, **changes})


def test_a_month_older_than_the_champions_stays_out_unless_forced():
    assert comparison().decision.promote
    stale = comparison(champion_month=Month(5))
    assert not stale.decision.promote and "older than the champion's training month month_005" in stale.decision.reason
    assert comparison(champion_month=Month(5), force=True).decision.promote
    assert month_older_than_champion(Month(2), None) is None
    assert month_older_than_champion(Month(2), Month(2)) is None


def test_tags_and_summary_say_the_same_thing():
    for decided in (comparison(), comparison(champion_auc=float("nan"), bootstrap=None)):
        tags, summary = decided.tags(), decided.summary()
        assert tags["decision"] == ("promote" if summary["promote"] else "keep_champion")
        assert tags["reason"] == summary["reason"] and tags["eval_rows"] == str(summary["eval_rows"])
        assert float(tags["challenger_auc"]) == summary["challenger_auc"]
        assert tags["champion_version"] == summary["champion_version"]
    unscorable = comparison(champion_auc=float("nan"), bootstrap=None)
    assert unscorable.champion_unscorable and unscorable.summary()["champion_auc"] is None
    assert unscorable.tags()["champion_auc"] == "nan" and unscorable.tags()["auc_gain"] == ""
    first = comparison(champion_version=None, champion_auc=None, bootstrap=None, champion_month=None)
    assert first.decision.promote and first.tags()["champion_version"] == "" and not first.champion_unscorable
    assert comparison().summary()["auc_gain_ci"] == [SIGNIFICANT.ci_low, SIGNIFICANT.ci_high]


def test_score_gain_tells_no_champion_from_an_unscorable_one():
    labels, scores = scored_rows(400, seed=1, signal=1.0)
    auc, champion_auc, bootstrap = score_gain(labels, scores, None, seed=0)
    assert auc == roc_auc_score(labels, scores) and champion_auc is None and bootstrap is None
    _, champion_auc, bootstrap = score_gain(labels, scores, np.full(len(labels), np.nan), seed=0)
    assert math.isnan(champion_auc) and bootstrap is None
    _, champion_auc, bootstrap = score_gain(labels, scores, scores * 0.5, seed=0)
    assert champion_auc == roc_auc_score(labels, scores) and abs(bootstrap.gain) < 1e-12
