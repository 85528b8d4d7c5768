"""The batch scoring rules: which month a run scores, rank and decile, the COPY text."""

from __future__ import annotations

import math
from datetime import date
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from streamflow_mlops.config.months import month_as_of, month_of_as_of
from streamflow_mlops.pipelines.score import copy_chunks, month_to_score, rank_and_decile


def event(asset: str, **extra):
    return SimpleNamespace(asset=SimpleNamespace(name=asset), extra=extra)


def never() -> str:
    raise AssertionError("the newest month should not be needed")


def test_a_published_month_is_scored_as_such():
    events = {"streamflow_features": [event("streamflow_features", month="month_002")]}
    assert month_to_score("", events, never) == "month_002"
    both = events | {"streamflow_champion": [event("streamflow_champion", month="month_000", version="3")]}
    assert month_to_score("month_001", both, never) == "month_002"


def test_a_new_champion_rescores_the_newest_month_not_its_training_month():
    events = {"streamflow_champion": [event("streamflow_champion", month="month_000", version="3")]}
    assert month_to_score("", events, lambda: "month_004") == "month_004"


def test_a_manual_run_scores_its_param_or_the_newest_month():
    assert month_to_score("month_003", None, never) == "month_003"
    assert month_to_score("", {}, lambda: "month_001") == "month_001"
    with pytest.raises(LookupError):
        month_to_score("", None, lambda: None)


def test_rank_one_is_the_riskiest_ties_keep_row_order_and_deciles_split_evenly():
    rank, decile = rank_and_decile(np.array([0.2, 0.9, 0.2, 0.5]))
    assert rank.tolist() == [3, 1, 4, 2]
    assert decile.tolist() == [math.ceil(10 * r / 4) for r in rank]
    rank, decile = rank_and_decile(np.random.default_rng(0).random(1003))
    assert sorted(rank.tolist()) == list(range(1, 1004))
    assert np.bincount(decile)[1:].min() >= 100 and decile.min() == 1 and decile.max() == 10


def test_copy_text_round_trips_probabilities_and_escapes_backslashes():
    scores = pd.DataFrame(
        {
            "user_id": ["0001-AAAAA", "0002-BBBBB", "0003-CCCCC"],
            "churn_probability": [0.1 + 0.2, 1 / 3, 0.5],
            "rank": [2, 3, 1],
            "decile": [7, 10, 4],
            "reasons": ["[]", '[{"feature": "net_service", "value": "caf\\u00e9", "contribution": 0.5}]', "[]"],
        }
    )
    chunks = list(copy_chunks(scores, "month_001", date(2024, 2, 29), "7", chunk_rows=2))
    assert len(chunks) == 2
    lines = "".join(chunks).splitlines()
    fields = [line.split("\t") for line in lines]
    assert [float(f[3]) for f in fields] == scores["churn_probability"].tolist()
    assert fields[0][:3] == ["month_001", "0001-AAAAA", "2024-02-29"] and fields[0][6] == "7"
    assert fields[1][7] == '[{"feature": "net_service", "value": "caf\\\\u00e9", "contribution": 0.5}]'


def test_month_of_as_of_inverts_month_as_of():
    assert [month_of_as_of(month_as_of(m)) for m in range(30)] == list(range(30))
    with pytest.raises(ValueError):
        month_of_as_of(date(2024, 2, 28))
