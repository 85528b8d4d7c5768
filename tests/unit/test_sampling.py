"""The seeded training sample and the evaluation split, as rows stream by (model/sampling.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamflow_mlops.config.holdout import is_eval_holdout
from streamflow_mlops.model.sampling import HashSample, TrainingSplit


def month(users: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ids = sorted(f"{i:04d}-{chr(65 + i % 26) * 5}" for i in range(users))
    return pd.DataFrame({"user_id": ids, "x": rng.random(users), "churn_label": rng.integers(0, 2, users)})


def chunks(frame: pd.DataFrame, rows: int):
    return [frame.iloc[i : i + rows] for i in range(0, len(frame), rows)]


def test_the_sample_is_the_smallest_hashes_whatever_the_chunks_or_their_order():
    frame = month()
    samples = []
    for rows, reverse in ((97, False), (1000, True), (len(frame), False)):
        sample = HashSample(seed=7, max_rows=600)
        for chunk in chunks(frame, rows)[:: -1 if reverse else 1]:
            sample.add(chunk)
        samples.append(sample.frame())
    assert all(s.equals(samples[0]) for s in samples)
    assert len(samples[0]) == 600 and samples[0]["user_id"].is_monotonic_increasing
    other = HashSample(seed=8, max_rows=600)
    other.add(frame)
    assert set(other.frame()["user_id"]) != set(samples[0]["user_id"])


def test_no_more_rows_than_the_sample_keeps_them_all_in_user_order():
    frame = month(300)
    sample = HashSample(seed=1, max_rows=300)
    for chunk in chunks(frame, 50):
        sample.add(chunk)
    assert sample.frame().equals(frame.reset_index(drop=True)) and sample.rows_seen == 300


def test_the_split_keeps_every_held_out_row_and_samples_only_the_others():
    frame = month()
    split = TrainingSplit(seed=3, max_rows=1000)
    for chunk in chunks(frame, 333):
        split.add(chunk)
    train, val = split.frames()
    held_out = is_eval_holdout(frame["user_id"])
    assert val["user_id"].tolist() == frame.loc[held_out, "user_id"].tolist()
    assert len(train) == 1000 and split.training_rows_seen == (~held_out).sum()
    assert not is_eval_holdout(train["user_id"]).any()
