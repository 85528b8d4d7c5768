"""Train a challenger: a scikit-learn Pipeline over the raw FeatureService features, logged whole.

`fit_challenger` is the pure part (training rows and evaluation rows in, a fitted pipeline, its
scores on the evaluation holdout, the threshold and metrics out; `train_model` splits a whole
month's frame first). The month's rows of the held-out users (config/holdout.py) never reach the
fit; the decision threshold is chosen on out-of-fold scores of the training rows, so the
F1/precision/recall logged on the holdout are not tuned on it. Logging and registering a trained
model is `pipelines/train.py`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, SplineTransformer, StandardScaler

from streamflow_mlops.config.holdout import EVAL_HOLDOUT_SHARE, is_eval_holdout
from streamflow_mlops.config.schema import ENTITY, FEATURE_NAMES, LABEL, TIMESTAMP, feature_column
from streamflow_mlops.config.settings import DEFAULT_CHUNK_ROWS
from streamflow_mlops.model.holdout_rows import HoldoutRows

log = logging.getLogger(__name__)

CLASSIFIERS = ("hgb", "rf", "logreg", "spline_logreg")
# The best validation AUC of bench/bench_models.py, cheap to fit and to serve (docs/decisions.md).
DEFAULT_CLASSIFIER = "spline_logreg"
VALIDATION_FRACTION = 0.2
# Out-of-fold scores over 5 folds cover every training row once; each fold model sees 80% of
# them, close enough to the final fit for the F1-best cut to carry over.
THRESHOLD_CV_FOLDS = 5


def make_classifier(name: str, seed: int) -> ClassifierMixin:
    """A fresh, seeded classifier by short name (see CLASSIFIERS; `spline_logreg` is a logistic
    regression whose pipeline expands each numeric feature into splines)."""
    if name == "hgb":
        # A slower learning rate with early stopping on an internal seeded split: the labels are
        # Bernoulli draws, so a long, fast boosting run fits their noise.
        return HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=400, max_leaf_nodes=15, min_samples_leaf=40,
            l2_regularization=1.0, early_stopping=True, validation_fraction=0.15, n_iter_no_change=30,
            random_state=seed,
        )  # fmt: skip
    if name == "rf":
        return RandomForestClassifier(n_estimators=300, min_samples_leaf=5, n_jobs=-1, random_state=seed)
    if name in ("logreg", "spline_logreg"):
        return LogisticRegression(C=1.0, max_iter=3000)
    raise ValueError(f"unknown classifier {name!r}; choose one of {CLASSIFIERS}")


def build_pipeline(classifier: str, seed: int, features: tuple[str, ...] | list[str] = FEATURE_NAMES) -> Pipeline:
    """Preprocessing + classifier. The numeric/categorical split comes from the schema, so the
    pipeline takes the raw columns Feast returns, by name, in any order."""
    numeric = [f for f in features if not feature_column(f).categorical]
    categorical = [f for f in features if feature_column(f).categorical]
    numeric_steps: list[Any] = [SimpleImputer(strategy="median")]
    if classifier == "spline_logreg":
        # Churn responds to tenure, fees and usage along curves (fast early churn, saturating
        # effects); cubic splines let a linear model follow them, linear beyond the seen range.
        numeric_steps.append(SplineTransformer(n_knots=5, degree=3, extrapolation="linear"))
    if classifier in ("logreg", "spline_logreg"):
        numeric_steps.append(StandardScaler())
    preprocess = ColumnTransformer(
        [
            ("numeric", make_pipeline(*numeric_steps), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ],
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", preprocess), ("classifier", make_classifier(classifier, seed))])


def split_frame(
    frame: pd.DataFrame, seed: int, val_fraction: float = VALIDATION_FRACTION
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified, seeded random train/validation split (the scheme before the evaluation holdout;
    bench/bench_honest.py measures how it favoured the champion). Rows are ordered by user_id
    first so the same month and seed give the same split whatever order they came in."""
    ordered = frame.sort_values(ENTITY, kind="stable").reset_index(drop=True)
    train, val = train_test_split(ordered, test_size=val_fraction, random_state=seed, stratify=ordered[LABEL])
    return train.reset_index(drop=True), val.reset_index(drop=True)


def holdout_split(frame: pd.DataFrame, share: float = EVAL_HOLDOUT_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, evaluation rows): the held-out users' rows never train any model. Both
    ordered by user_id, so the split does not depend on the order the rows came in."""
    ordered = frame.sort_values(ENTITY, kind="stable").reset_index(drop=True)
    held_out = is_eval_holdout(ordered[ENTITY], share)
    return ordered[~held_out].reset_index(drop=True), ordered[held_out].reset_index(drop=True)


def out_of_fold_scores(
    pipeline: Pipeline, rows: pd.DataFrame, features: list[str], seed: int, folds: int = THRESHOLD_CV_FOLDS
) -> np.ndarray:
    """Each training row scored by a clone of `pipeline` fitted on the other folds (stratified, seeded)."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(pipeline, rows[features], rows[LABEL].to_numpy(), cv=splitter, method="predict_proba")[
        :, 1
    ]


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 when predicting churn for `score >= threshold`."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The curve's last point (recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Validation metrics at a decision threshold (names as logged to MLflow)."""
    predicted = (scores >= threshold).astype(int)
    return {
        "val_auc": float(roc_auc_score(labels, scores)),
        "val_average_precision": float(average_precision_score(labels, scores)),
        "val_log_loss": float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7))),
        "val_f1": float(f1_score(labels, predicted, zero_division=0)),
        "val_accuracy": float(accuracy_score(labels, predicted)),
        "val_precision": float(precision_score(labels, predicted, zero_division=0)),
        "val_recall": float(recall_score(labels, predicted, zero_division=0)),
        "threshold": float(threshold),
    }


def scalar_params(estimator: Any, prefix: str) -> dict[str, Any]:
    """The estimator's hyperparameters that MLflow can log as params."""
    return {
        f"{prefix}{key}": value
        for key, value in estimator.get_params(deep=False).items()
        if value is None or isinstance(value, (bool, int, float, str))
    }


@dataclass
class TrainedModel:
    """A fitted pipeline with the rows it was fitted on and the held-out rows it was judged on
    (`val`: the month's rows of the evaluation population, in memory or in a file)."""

    pipeline: Pipeline
    classifier: str
    seed: int
    features: list[str]
    train: pd.DataFrame
    val: HoldoutRows
    val_scores: np.ndarray
    threshold: float
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)


def train_model(
    frame: pd.DataFrame,
    seed: int,
    classifier: str = DEFAULT_CLASSIFIER,
    features: tuple[str, ...] | list[str] = FEATURE_NAMES,
    holdout_share: float = EVAL_HOLDOUT_SHARE,
) -> TrainedModel:
    """Hold out the evaluation users of a whole month's frame, then `fit_challenger`."""
    missing = [c for c in [ENTITY, *features, LABEL] if c not in frame.columns]
    if missing:
        raise ValueError(f"training frame lacks columns {missing}")
    train, val = holdout_split(frame, holdout_share)
    return fit_challenger(train, val, seed, classifier, features, holdout_share)


def predict_scores(
    pipeline: Pipeline, rows: pd.DataFrame | HoldoutRows, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> np.ndarray:
    """`predict_proba(...)[:, 1]` a chunk of rows at a time: the encoded matrix of a spline
    pipeline is ~90 float columns, 1.4 GB for two million rows at once. Rows are scored
    independently, so the scores are those of one call on all rows (a test checks it)."""
    rows = rows if isinstance(rows, HoldoutRows) else HoldoutRows.of(rows)
    needed = list(getattr(pipeline, "feature_names_in_", rows.columns))
    parts = [pipeline.predict_proba(batch)[:, 1] for batch in rows.batches(columns=needed, batch_rows=chunk_rows)]
    return np.concatenate(parts) if parts else np.empty(0)


def fit_challenger(
    train: pd.DataFrame,
    val: pd.DataFrame | HoldoutRows,
    seed: int,
    classifier: str = DEFAULT_CLASSIFIER,
    features: tuple[str, ...] | list[str] = FEATURE_NAMES,
    holdout_share: float = EVAL_HOLDOUT_SHARE,
    training_rows_available: int | None = None,
) -> TrainedModel:
    """Pick the F1-best threshold on out-of-fold scores of the training rows, fit on all of them,
    report metrics on the evaluation rows (`val`). Deterministic in `seed`.
    `training_rows_available` says how many training rows the month had when `train` is a sample."""
    features = list(features)
    missing = [c for c in [ENTITY, *features, LABEL] if c not in train.columns]
    if missing:
        raise ValueError(f"training frame lacks columns {missing}")
    val = val if isinstance(val, HoldoutRows) else HoldoutRows.of(val)
    pipeline = build_pipeline(classifier, seed, features)
    labels_train = train[LABEL].to_numpy()
    threshold, cv_f1 = best_f1_threshold(labels_train, out_of_fold_scores(pipeline, train, features, seed))
    started = time.perf_counter()
    pipeline.fit(train[features], labels_train)
    train_seconds = time.perf_counter() - started
    val_scores = predict_scores(pipeline, val)
    metrics = classification_metrics(val.column(LABEL), val_scores, threshold)
    metrics["threshold_cv_f1"] = cv_f1
    metrics["train_seconds"] = train_seconds
    available = len(train) if training_rows_available is None else training_rows_available
    params = {
        "seed": seed,
        "model": classifier,
        "model_class": type(pipeline.named_steps["classifier"]).__name__,
        "eval_holdout_share": holdout_share,
        "threshold_rule": f"F1-best on {THRESHOLD_CV_FOLDS}-fold out-of-fold scores of the training rows",
        "n_train": len(train),
        "n_train_available": available,
        "train_sample": "all training rows" if available == len(train) else f"seeded sample of {len(train)}",
        "n_val": val.rows,
        "n_features": len(features),
        "train_positive_rate": round(float(train[LABEL].mean()), 6),
        **scalar_params(pipeline.named_steps["classifier"], "clf__"),
    }
    log.info(
        "trained %s (seed %d) on %d of %d rows: holdout val_auc %.4f on %d rows, threshold %.3f (CV F1 %.3f)",
        classifier, seed, len(train), available, metrics["val_auc"], len(val), threshold, cv_f1,
    )  # fmt: skip
    return TrainedModel(pipeline, classifier, seed, features, train, val, val_scores, threshold, metrics, params)


def best_achievable_auc(truth: pd.DataFrame | Iterable[pd.DataFrame], rows: pd.DataFrame | HoldoutRows) -> float:
    """AUC of the generator's true churn probabilities on `rows` (the ceiling for any model);
    `truth` (user_id, churn_probability) may come a chunk at a time and hold other users too."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = rows if isinstance(rows, HoldoutRows) else HoldoutRows.of(rows)
    ids = rows.arrow_column(ENTITY)
    probabilities = np.full(rows.rows, np.nan)
    for chunk in [truth] if isinstance(truth, pd.DataFrame) else truth:
        where = pc.index_in(pa.array(chunk[ENTITY].astype(str)), value_set=ids)
        found = where.is_valid().to_numpy(zero_copy_only=False)
        probabilities[where.drop_null().to_numpy()] = chunk["churn_probability"].to_numpy()[found]
    missing = int(np.isnan(probabilities).sum())
    if missing:
        raise ValueError(f"truth covers {rows.rows - missing} of {rows.rows} validation rows")
    return float(roc_auc_score(rows.column(LABEL), probabilities))


def frame_from_tables(tables: dict[str, pd.DataFrame], as_of: date) -> pd.DataFrame:
    """Raw drop tables joined on user_id into the training-set shape `build_training_set` returns
    (for generated drops used without a warehouse: benchmarks and model tests)."""
    frame = tables["users"]
    for name, table in tables.items():
        if name != "users":
            frame = frame.merge(table, on=ENTITY, how="inner", validate="one_to_one")
    frame.insert(1, TIMESTAMP, pd.Timestamp(as_of, tz="UTC"))
    return frame[[ENTITY, TIMESTAMP, *FEATURE_NAMES, LABEL]]
