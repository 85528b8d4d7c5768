"""The evaluation holdout: a salt-free hash rule, a fixed share, the same users every month and run."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from streamflow_mlops.config.holdout import EVAL_HOLDOUT_SHARE, eval_population, holdout_bucket, is_eval_holdout
from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL
from streamflow_mlops.model.training import (
    best_f1_threshold,
    build_pipeline,
    frame_from_tables,
    holdout_split,
    out_of_fold_scores,
    train_model,
)
from streamflow_mlops.synthetic.generate import DropSpec, build_drop, user_ids


def test_bucket_is_the_documented_salt_free_rule():
    for uid in ("7590-VHVEG", "5575-GNVDE", "0000-AAAAA"):
        digest = hashlib.blake2b(uid.encode("utf-8"), digest_size=8).digest()
        assert holdout_bucket(uid) == int.from_bytes(digest, "big") / 2**64
    # Pinned: a change of the rule would silently move users between training and evaluation.
    assert holdout_bucket("7590-VHVEG") == pytest.approx(0.5231491461209571, abs=0)


def test_share_is_close_to_the_setting_and_nested():
    ids = user_ids(20_000, np.random.default_rng(1))
    mask = is_eval_holdout(ids)
    assert abs(mask.mean() - EVAL_HOLDOUT_SHARE) < 0.01
    smaller = is_eval_holdout(ids, share=0.1)
    assert not (smaller & ~mask).any()
    with pytest.raises(ValueError):
        is_eval_holdout(ids, share=1.0)


def test_same_users_every_month_whatever_the_row_order():
    month0, _ = build_drop(DropSpec(0, users=800, seed=3))
    month4, _ = build_drop(DropSpec(4, users=800, seed=3))
    held0 = set(month0["users"][ENTITY][is_eval_holdout(month0["users"][ENTITY])])
    held4 = set(month4["users"][ENTITY][is_eval_holdout(month4["users"][ENTITY])])
    assert held0 == held4 and held0
    shuffled = month0["users"].sample(frac=1, random_state=0)[ENTITY]
    assert set(shuffled[is_eval_holdout(shuffled)]) == held0


def test_eval_population_names_share_and_month():
    assert eval_population(Month(1)) == "holdout-20%:month_001"


@pytest.fixture(scope="module")
def frame():
    spec = DropSpec(0, users=1000, seed=5)
    tables, _ = build_drop(spec)
    return frame_from_tables(tables, spec.as_of)


def test_no_model_trains_on_a_held_out_user(frame):
    trained = train_model(frame, seed=1)
    assert is_eval_holdout(trained.val.column(ENTITY)).all()
    assert not is_eval_holdout(trained.train[ENTITY]).any()
    assert len(trained.train) + len(trained.val) == len(frame)
    other_seed = train_model(frame, seed=2)
    assert list(other_seed.val.column(ENTITY)) == list(trained.val.column(ENTITY))


def test_threshold_is_chosen_without_the_evaluation_rows(frame):
    trained = train_model(frame, seed=1)
    train, held = holdout_split(frame)
    pipeline = build_pipeline(trained.classifier, 1, trained.features)
    expected, _ = best_f1_threshold(train[LABEL].to_numpy(), out_of_fold_scores(pipeline, train, trained.features, 1))
    assert trained.threshold == expected
    # Scrambling the evaluation labels changes the reported metrics but never the threshold.
    scrambled = frame.copy()
    held_mask = is_eval_holdout(scrambled[ENTITY])
    scrambled.loc[held_mask, LABEL] = 1 - scrambled.loc[held_mask, LABEL]
    again = train_model(scrambled, seed=1)
    assert again.threshold == trained.threshold
    assert again.metrics["val_auc"] != trained.metrics["val_auc"]
