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
    train, holdout = split.frames()
    val = holdout.frame()
    held_out = is_eval_holdout(frame["user_id"])
    assert val["user_id"].tolist() == frame.loc[held_out, "user_id"].tolist()
    assert len(train) == 1000 and split.training_rows_seen == (~held_out).sum()
    assert not is_eval_holdout(train["user_id"]).any()


def test_evaluation_rows_in_a_file_are_the_rows_held_in_memory(tmp_path):
    frame = month().assign(plan=lambda f: np.where(f["x"] > 0.5, "premium", "basic"))
    in_memory, on_disk = TrainingSplit(seed=3, max_rows=1000), TrainingSplit(seed=3, max_rows=1000, directory=tmp_path)
    for chunk in chunks(frame, 333):
        in_memory.add(chunk)
        on_disk.add(chunk)
    (train, memory), (train_disk, disk) = in_memory.frames(), on_disk.frames()
    assert disk.path is not None and disk.path.parent == tmp_path
    assert train.equals(train_disk) and disk.frame().equals(memory.frame()) and disk.rows == memory.rows
    for name in ("user_id", "x"):
        assert np.array_equal(disk.column(name), memory.column(name))
    batches = [list(rows.batches(columns=["user_id", "x"], batch_rows=100)) for rows in (memory, disk)]
    assert [len(b) for b in batches[0]] == [len(b) for b in batches[1]] and len(batches[0]) > 2
    assert pd.concat(batches[1], ignore_index=True).equals(pd.concat(batches[0], ignore_index=True))
    assert disk.head(7).equals(memory.head(7)) and list(disk.head(0).columns) == list(frame.columns)


def test_written_rows_carry_extra_columns_and_come_back_ordered_by_user(tmp_path):
    from streamflow_mlops.model.holdout_rows import HoldoutRows, HoldoutWriter

    frame = month(1000)
    writer = HoldoutWriter(tmp_path / "shuffled.parquet")
    for chunk in chunks(frame.sample(frac=1, random_state=2), 128):
        writer.add(chunk)
    assert not writer.ordered
    rows = writer.close()
    assert rows.frame().equals(frame)
    scores = np.linspace(0, 1, len(frame))
    rows.write(tmp_path / "scored.parquet", extra={"score": scores}, batch_rows=300)
    scored = HoldoutRows.read(tmp_path / "scored.parquet")
    assert scored.frame().equals(frame.assign(score=scores))
    empty = HoldoutWriter(tmp_path / "empty.parquet")
    empty.add(frame.iloc[:0])
    assert empty.close().rows == 0
