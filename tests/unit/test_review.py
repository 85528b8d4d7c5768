"""The promotion review: the request's body and what an answer records (pipelines/review.py)."""

from __future__ import annotations

import pytest

from streamflow_mlops.model.model_card import model_card_markdown
from streamflow_mlops.pipelines.review import APPROVE, REJECT, Review, approval_params, review_markdown

DECISION = {
    "version": "3",
    "run_id": "abc",
    "month": "month_002",
    "promote": True,
    "reason": "AUC gain +0.0123 >= delta 0.0050 (0.8712 vs 0.8589), 90% CI [+0.0061, +0.0180]",
    "delta": 0.005,
    "challenger_auc": 0.8712,
    "champion_version": "2",
    "champion_auc": 0.8589,
    "auc_gain": 0.0123,
    "auc_gain_ci": [0.0061, 0.0180],
    "eval_population": "holdout-20%:month_002",
    "eval_rows": 1410,
}


def test_the_request_states_the_decision_in_full():
    realized = [{"month": "month_002", "rows": 7043, "auc": 0.8411, "validation_auc": 0.8603}]
    body = review_markdown(DECISION, realized, {"challenger in MLflow": "http://127.0.0.1:5000/#/models/x/versions/3"})
    for fact in ("challenger v3", "champion v2", "0.8712", "0.8589", "+0.0123", "[+0.0061, +0.0180]", "1410 rows"):
        assert fact in body, fact
    assert "| month_002 | 7043 | 0.8411 | 0.8603 |" in body and "versions/3" in body
    assert "not measured yet" in review_markdown({**DECISION, "champion_version": None}, [], {})


@pytest.mark.parametrize(
    ("answer", "outcome", "approved"),
    [
        (
            {"chosen_options": [APPROVE], "by": "ana", "at": "2026-12-04T10:00:00+00:00", "comment": "ok"},
            "approved",
            True,
        ),
        (
            {"chosen_options": [REJECT], "by": "bo", "at": "2026-12-04T10:00:00+00:00", "comment": "Q4 freeze"},
            "rejected",
            False,
        ),
        ({"chosen_options": [], "timed_out": True, "at": "2026-12-11T10:00:00+00:00"}, "timed_out", False),
    ],
)
def test_every_answer_leaves_an_audit_trail(answer, outcome, approved):
    review = Review.from_answer(answer)
    assert review.outcome == outcome and review.approved is approved
    tags = review.tags()
    assert tags["approval"] == outcome and tags["approval_at"] == answer["at"]
    assert tags["approval_by"] == answer.get("by", "")
    card = model_card_markdown("3", {**tags, "decision": "promote"}, {}, {}, "abc")
    assert "| approval |" in card and (answer.get("by") or "no answer") in card


def test_the_approval_param_defaults_to_the_setting(monkeypatch):
    from streamflow_mlops.config.settings import get_settings

    monkeypatch.setenv("STREAMFLOW_APPROVAL", "human")
    get_settings.cache_clear()
    try:
        assert approval_params()["approval"].value == "human"
        monkeypatch.setenv("STREAMFLOW_APPROVAL", "sometimes")
        get_settings.cache_clear()
        with pytest.raises(ValueError, match="STREAMFLOW_APPROVAL"):
            get_settings()
    finally:
        monkeypatch.delenv("STREAMFLOW_APPROVAL")
        get_settings.cache_clear()
    assert approval_params()["approval"].value == "auto"
