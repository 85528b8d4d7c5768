"""Issue 25: a month worked through in chunks gives exactly what the whole month at once gives.

Every step that streams a month (the point-in-time training set, training and its evaluation
rows, batch scoring with Postgres ranking, the champion's realized performance, the drift sample)
runs twice on the same generated months: once with chunks of CHUNK rows (the month spans several
chunks) and once with one chunk larger than the month. Same rows, same order, same ranks,
probabilities equal to the last bit.
"""

from __future__ import annotations

import psycopg
import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL
from streamflow_mlops.config.settings import CHAMPION_ALIAS, FEATURE_SERVICE, REGISTERED_MODEL, get_settings
from streamflow_mlops.features.store import apply_repo
from tests.conftest import load_months

pytestmark = pytest.mark.slow

USERS = 2500
CHUNK = 700
WHOLE = 1_000_000


def use_chunks(monkeypatch, rows: int):
    monkeypatch.setenv("STREAMFLOW_CHUNK_ROWS", str(rows))
    get_settings.cache_clear()
    return get_settings()


def scores_table(db_url: str) -> list[tuple]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT month, user_id, as_of, churn_probability, rank, decile, model_version, reasons::text "
            "FROM streamflow.churn_scores ORDER BY month, rank"
        ).fetchall()


@pytest.fixture
def two_months(stack_env, tmp_path):
    load_months(stack_env.db_url, tmp_path / "drops", (0, 1), USERS)
    apply_repo()
    return stack_env


def test_training_set_and_feature_frames_span_chunks_and_equal_the_whole_month(two_months, monkeypatch):
    import pandas as pd

    from streamflow_mlops.features.retrieval import iter_feature_frames, iter_training_set

    whole = list(iter_training_set(Month(1), settings=use_chunks(monkeypatch, WHOLE)))
    chunked = list(iter_training_set(Month(1), settings=use_chunks(monkeypatch, CHUNK)))
    assert len(whole) == 1 and len(chunked) == -(-USERS // CHUNK)
    assert all(len(c) <= CHUNK for c in chunked)
    pd.testing.assert_frame_equal(pd.concat(chunked, ignore_index=True), whole[0])
    assert whole[0][ENTITY].is_monotonic_increasing and whole[0][ENTITY].is_unique

    frames = pd.concat(list(iter_feature_frames(Month(0), settings=get_settings())), ignore_index=True)
    one = next(iter_feature_frames(Month(0), settings=use_chunks(monkeypatch, WHOLE)))
    pd.testing.assert_frame_equal(frames, one)


def test_the_drift_sample_is_the_same_users_whatever_the_chunks(two_months, monkeypatch):
    import pandas as pd

    from streamflow_mlops.features.retrieval import iter_feature_frames

    def sample(month: str, chunk_rows: int) -> pd.DataFrame:
        frames = iter_feature_frames(Month.parse(month), settings=use_chunks(monkeypatch, chunk_rows), sample_rows=1000)
        return pd.concat(list(frames), ignore_index=True)

    small, large = sample("month_001", 300), sample("month_001", WHOLE)
    pd.testing.assert_frame_equal(small, large)
    # md5 buckets: about 1,000 of 2,500 users (binomial sd ~25), the same users in both months.
    assert 900 < len(small) < 1100
    assert set(sample("month_000", WHOLE)[ENTITY]) == set(small[ENTITY])


def test_a_sampled_training_set_is_seeded_and_independent_of_the_chunks(two_months, monkeypatch):
    from streamflow_mlops.features.retrieval import iter_training_set
    from streamflow_mlops.model.sampling import TrainingSplit

    def split(chunk_rows: int, seed: int):
        splitter = TrainingSplit(seed=seed, max_rows=800)
        for chunk in iter_training_set(Month(0), settings=use_chunks(monkeypatch, chunk_rows)):
            splitter.add(chunk)
        train, holdout = splitter.frames()
        return splitter, train, holdout.frame()

    splitter, train, val = split(CHUNK, seed=3)
    _, train_whole, val_whole = split(WHOLE, seed=3)
    assert train.equals(train_whole) and val.equals(val_whole)
    assert len(train) == 800 < splitter.training_rows_seen == USERS - len(val)
    assert train[ENTITY].is_monotonic_increasing and not set(train[ENTITY]) & set(val[ENTITY])
    assert set(split(CHUNK, seed=4)[1][ENTITY]) != set(train[ENTITY])


def test_training_scoring_and_realized_performance_in_chunks_equal_the_whole_month(two_months, monkeypatch, tmp_path):
    import mlflow.sklearn
    import numpy as np

    from streamflow_mlops.model.registry import model_uri, validation_rows
    from streamflow_mlops.model.tracking import configure_mlflow
    from streamflow_mlops.pipelines.performance import score_labelled_rows
    from streamflow_mlops.pipelines.score import score_month
    from streamflow_mlops.pipelines.train import train_and_register

    settings = use_chunks(monkeypatch, CHUNK)
    chunked = train_and_register("month_000", seed=42)
    use_chunks(monkeypatch, WHOLE)
    whole = train_and_register("month_000", seed=42)
    skip = {"train_seconds"}
    assert {k: v for k, v in chunked["metrics"].items() if k not in skip} == {
        k: v for k, v in whole["metrics"].items() if k not in skip
    }
    assert validation_rows(chunked["run_id"]).equals(validation_rows(whole["run_id"]))

    configure_mlflow(settings).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, whole["version"])
    score_month("month_001", top_k=50, settings=use_chunks(monkeypatch, WHOLE))
    rows_whole = scores_table(settings.db_url)
    csv_whole = (settings.state_dir / "scores" / "month_001_top50.csv").read_bytes()
    score_month("month_001", top_k=50, settings=use_chunks(monkeypatch, CHUNK))
    assert scores_table(settings.db_url) == rows_whole
    assert (settings.state_dir / "scores" / "month_001_top50.csv").read_bytes() == csv_whole
    assert [r[4] for r in rows_whole] == list(range(1, USERS + 1))
    probabilities = np.array([r[3] for r in rows_whole])
    assert (np.diff(probabilities) <= 0).all()

    pipeline = mlflow.sklearn.load_model(model_uri(whole["version"]))
    small = score_labelled_rows(Month(1), pipeline, FEATURE_SERVICE, use_chunks(monkeypatch, CHUNK))
    large = score_labelled_rows(Month(1), pipeline, FEATURE_SERVICE, use_chunks(monkeypatch, WHOLE))
    assert np.array_equal(small.labels, large.labels) and small.scores.tobytes() == large.scores.tobytes()
    assert small.sample.equals(large.sample) and len(small.sample) == USERS
    by_user = dict(zip((r[1] for r in rows_whole), probabilities, strict=True))
    assert small.sample["churn_probability"].tolist() == [by_user[u] for u in small.sample[ENTITY]]
    assert small.sample[LABEL].tolist() == small.labels.tolist()
