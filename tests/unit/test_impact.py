"""The impact of a promotion on the month's list (model/impact.py)."""

from __future__ import annotations

import numpy as np
import pytest

from streamflow_mlops.model.impact import ImpactTally, calibration, impact_metrics, top_users
from streamflow_mlops.pipelines.review import impact_lines

USERS = 3000


def month(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"u{i:05d}" for i in range(USERS)], dtype=object)
    return ids, rng.random(USERS), rng.uniform(20, 110, USERS)


def tally(champion, challenger, weight, ids, chunk, top_k=100, thresholds=(0.5, 0.5)):
    counted = ImpactTally(top_k, *thresholds)
    for start in range(0, USERS, chunk):
        part = slice(start, start + chunk)
        counted.add(ids[part], champion[part], challenger[part], weight[part])
    labels = (champion > 0.5).astype(int)
    return counted.report(labels, champion, challenger)


def test_the_same_scores_change_nothing_and_chunks_do_not_matter():
    ids, scores, fees = month()
    report = tally(scores, scores, fees, ids, chunk=250)
    assert report["top_k_entering"] == report["top_k_leaving"] == report["decision_flips"] == 0
    assert report["spearman"] == pytest.approx(1.0)
    assert report == tally(scores, scores, fees, ids, chunk=USERS)


def test_the_list_follows_expected_loss_and_counts_who_moves():
    ids, scores, fees = month()
    challenger = scores.copy()
    top = top_users(ids, scores * fees, 100)[0]
    leaving = set(top[-10:])
    challenger[np.isin(ids, list(leaving))] = 0.0  # ten of the champion's list would drop out
    report = tally(scores, challenger, fees, ids, chunk=333)
    assert report["top_k_leaving"] == report["top_k_entering"] == 10
    assert set(report["leaving_users"]) == leaving
    assert report["flips_to_stay"] == sum(scores[np.isin(ids, list(leaving))] >= 0.5) and report["flips_to_churn"] == 0
    by_probability = tally(scores, challenger, np.ones(USERS), ids, chunk=333)
    assert set(top_users(ids, scores, 100)[0]) != set(top), "expected loss and probability rank differently"
    assert by_probability["top_k_leaving"] <= 10
    assert set(impact_metrics(report)) >= {"impact_top_k_entering", "impact_spearman", "impact_decision_flips"}


def test_ties_are_broken_by_user_id():
    ids = np.array(["b", "a", "c"], dtype=object)
    assert list(top_users(ids, np.array([0.5, 0.5, 0.9]), 2)[0]) == ["c", "a"]


def test_calibration_tells_a_calibrated_model_from_a_biased_one():
    rng = np.random.default_rng(3)
    truth = rng.random(20_000)
    labels = (rng.random(20_000) < truth).astype(int)
    calibrated, biased = calibration(labels, truth), calibration(labels, np.clip(truth + 0.2, 0, 1))
    assert calibrated["calibration_error"] < 0.02 < biased["calibration_error"]
    assert calibrated["brier"] < biased["brier"]
    assert calibrated["observed_churn_rate"] == pytest.approx(labels.mean())


def test_the_review_shows_the_impact():
    ids, scores, fees = month()
    report = {"month": "month_001", "rank_by": "expected_loss", **tally(scores, scores[::-1].copy(), fees, ids, 500)}
    text = "\n".join(impact_lines(report))
    assert f"{report['top_k_leaving']} users would leave the list" in text and "| Brier score |" in text
    assert impact_lines(None) == []
