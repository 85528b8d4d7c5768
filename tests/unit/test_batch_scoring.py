"""The batch scoring rules: which month a run scores, rank and decile, the COPY text."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace

import pandas as pd
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.pipelines.runs import month_to_score
from streamflow_mlops.pipelines.score import copy_text, rank_sql


def event(asset: str, **extra):
    return SimpleNamespace(asset=SimpleNamespace(name=asset), extra=extra)


def never() -> str:
    raise AssertionError("the newest month should not be needed")


def test_a_published_month_is_scored_as_such():
    events = {"streamflow_features": [event("streamflow_features", month="month_002")]}
    assert month_to_score("", events, never) == Month(2)
    both = events | {"streamflow_champion": [event("streamflow_champion", month="month_000", version="3")]}
    assert month_to_score("month_001", both, never) == Month(2)


def test_a_new_champion_rescores_the_newest_month_not_its_training_month():
    events = {"streamflow_champion": [event("streamflow_champion", month="month_000", version="3")]}
    assert month_to_score("", events, lambda: Month(4)) == Month(4)


def test_a_manual_run_scores_its_param_or_the_newest_month():
    assert month_to_score("month_003", None, never) == Month(3)
    assert month_to_score("", {}, lambda: Month(1)) == Month(1)
    with pytest.raises(LookupError):
        month_to_score("", None, lambda: None)


def test_copy_text_round_trips_probabilities_and_escapes_backslashes():
    scores = pd.DataFrame(
        {
            "user_id": ["0001-AAAAA", "0002-BBBBB", "0003-CCCCC"],
            "churn_probability": [0.1 + 0.2, 1 / 3, 0.5],
            "monthly_fee": [19.99, 0.1 + 0.7, 110.0],
            "reasons": ["[]", '[{"feature": "net_service", "value": "caf\\u00e9", "contribution": 0.5}]', "[]"],
        }
    )
    fields = [line.split("\t") for line in copy_text(scores).splitlines()]
    assert [f[0] for f in fields] == scores["user_id"].tolist()
    assert [float(f[1]) for f in fields] == scores["churn_probability"].tolist()
    assert [float(f[2]) for f in fields] == scores["monthly_fee"].tolist()
    assert fields[1][3] == '[{"feature": "net_service", "value": "caf\\\\u00e9", "contribution": 0.5}]'


def test_the_rank_statement_computes_deciles_as_ceil_of_ten_ranks_over_n():
    statement = rank_sql(1003)
    assert "(10 * rank + 1003 - 1) / 1003" in statement
    assert "ORDER BY churn_probability DESC, user_id" in statement
    assert "ORDER BY expected_loss DESC, user_id" in statement
    assert "CASE WHEN loss_rank <= %(top_k)s" in statement
    assert "CASE WHEN rank <= %(top_k)s" in rank_sql(1003, "probability")
    with pytest.raises(ValueError):
        rank_sql(1003, "fee")
    assert all(-((-10 * r) // 1003) == (10 * r + 1003 - 1) // 1003 for r in range(1, 1004))


def test_month_of_as_of_inverts_month_as_of():
    assert [Month.of_as_of(Month(m).as_of) for m in range(30)] == [Month(m) for m in range(30)]
    with pytest.raises(ValueError):
        Month.of_as_of(date(2024, 2, 28))
