"""The drift gate: a pure decision from the measured drift share, the threshold and the champion."""

from __future__ import annotations

import pytest

from streamflow_mlops.monitoring.drift import DEFAULT_DRIFT_THRESHOLD, RETRAIN, SKIP, drift_gate


def test_no_champion_triggers_the_first_training():
    decision, reason = drift_gate(None, DEFAULT_DRIFT_THRESHOLD, has_champion=False)
    assert decision == RETRAIN
    assert "no champion" in reason


@pytest.mark.parametrize(
    ("share", "threshold", "expected"),
    [
        (0.5, 0.3, RETRAIN),
        (0.3, 0.3, RETRAIN),
        (0.29, 0.3, SKIP),
        (0.0, 0.3, SKIP),
        (0.0, 0.0, RETRAIN),
        (1.0, 1.0, RETRAIN),
    ],
)
def test_share_at_or_above_threshold_retrains(share, threshold, expected):
    decision, reason = drift_gate(share, threshold, has_champion=True)
    assert decision == expected
    assert f"{share:.3f}" in reason and f"{threshold:.3f}" in reason


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_outside_unit_interval_is_refused(threshold):
    with pytest.raises(ValueError, match="drift_threshold"):
        drift_gate(0.5, threshold, has_champion=True)


def test_champion_without_a_measured_share_is_an_error():
    with pytest.raises(ValueError):
        drift_gate(None, 0.3, has_champion=True)


# ---------------------------------------------------------------- Evidently on generated months
