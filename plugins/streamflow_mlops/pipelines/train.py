"""What the training DAG calls: train a challenger on a month, register it, decide against the champion.

`train_and_register` streams the month's point-in-time training set from Feast into the evaluation
rows and a seeded training sample (model/sampling.py), fits them (model/training.py
`fit_challenger`) and calls `log_challenger`, which does the MLflow work (run, params, metrics,
dataset input, plots, model, registered version). `evaluate_and_decide` scores the champion on the
challenger's evaluation rows and applies the promotion rule.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from streamflow_mlops.config.holdout import eval_population, is_eval_holdout
from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, LABEL, TIMESTAMP
from streamflow_mlops.config.settings import REGISTERED_MODEL
from streamflow_mlops.model.promotion import Comparison, score_gain
from streamflow_mlops.model.registry import load_champion, score_pipeline, validation_file
from streamflow_mlops.model.tracking import CHALLENGER_SCORE, configure_mlflow
from streamflow_mlops.model.training import DEFAULT_CLASSIFIER, best_achievable_auc

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from streamflow_mlops.model.registry import RegisteredVersion
    from streamflow_mlops.model.training import TrainedModel


class ChampionUnscorableError(RuntimeError):
    """The champion could not be scored on the challenger's rows: the run fails, the champion stays."""


def evaluate_and_decide(
    challenger: dict[str, Any], delta: float, force: bool = False, impact: bool = True
) -> dict[str, Any]:
    """Score the champion on the challenger's evaluation rows (the month's rows of the held-out
    users, which neither model trained on) and decide (model/promotion.py `Comparison`); the
    decision, both AUCs, the gain, its bootstrap interval and the rows that decided
    (`eval_population`, `eval_rows`) become tags on the challenger version. A promotion over a
    champion is measured first (unless `impact` is off: a month not in the feature store):
    what it would change in the month's list (pipelines/impact.py).

    A champion that can't be scored keeps its place and fails the run (ChampionUnscorableError),
    after the reason is tagged on the challenger."""
    client = configure_mlflow()
    version = str(challenger["version"])
    champion = load_champion(client)
    if champion is not None and champion.version == version:
        raise ValueError(f"version {version} is already the champion")
    labels, challenger_scores, champion_scores, eval_rows = score_evaluation_rows(challenger["run_id"], champion)
    challenger_auc, champion_auc, bootstrap = score_gain(
        labels, challenger_scores, champion_scores, seed=int(challenger.get("seed", 0))
    )
    month = Month.parse(challenger["month"])
    comparison = Comparison.decide(
        champion_month=champion.month if champion else None,
        force=force,
        version=version,
        month=month,
        delta=delta,
        challenger_auc=challenger_auc,
        champion_version=champion.version if champion else None,
        champion_auc=champion_auc,
        bootstrap=bootstrap,
        eval_population=eval_population(month),
        eval_rows=eval_rows,
    )
    measured = None
    if impact and comparison.decision.promote and champion is not None:
        from streamflow_mlops.pipelines.impact import measure_impact

        measured = measure_impact(month, challenger, champion, (labels, challenger_scores, champion_scores))
    for key, value in comparison.tags().items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)
    log.info("version %s vs champion %s: %s", version, comparison.champion_version, comparison.decision.reason)
    from streamflow_mlops.model.model_card import publish_model_card

    publish_model_card(client, version)
    if comparison.champion_unscorable and not comparison.decision.promote:
        raise ChampionUnscorableError(f"version {version}: {comparison.decision.reason}")
    return {**challenger, **comparison.summary(), "impact": measured}


def score_evaluation_rows(
    run_id: str, champion: RegisteredVersion | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """(labels, challenger scores, champion scores, rows) of the challenger's evaluation rows, read a
    batch at a time; champion scores are None without a champion, NaN when it can't score them."""
    with validation_file(run_id) as rows:
        if not all(is_eval_holdout(batch[ENTITY]).all() for batch in rows.batches(columns=[ENTITY])):
            raise ValueError(f"run {run_id}'s evaluation rows include users outside the evaluation holdout")
        labels, challenger_scores = rows.column(LABEL), rows.column(CHALLENGER_SCORE)
        champion_scores = None
        if champion is not None:
            champion_scores = score_pipeline(champion.version, champion.pipeline(), rows)
            if champion_scores is None:
                champion_scores = np.full(rows.rows, np.nan)
        return labels, challenger_scores, champion_scores, rows.rows


def read_truth(drops_dir: Path, month: Month, chunk_rows: int) -> Iterator[pd.DataFrame] | None:
    """The drop's `_truth.csv` (user_id, churn_probability) a chunk at a time when the drop was
    generated here (never present for real data)."""
    path = drops_dir / month.name / "_truth.csv"
    if not path.exists():
        return None

    def chunks() -> Iterator[pd.DataFrame]:
        with pd.read_csv(path, chunksize=chunk_rows, usecols=[ENTITY, "churn_probability"]) as reader:
            yield from reader

    return chunks()


def log_challenger(
    trained: TrainedModel,
    *,
    month: Month,
    feature_service: str,
    truth: Iterable[pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Log a trained model as a run of the `streamflow` experiment and register it as a version of
    `streamflow_churn`; returns the challenger summary the decision step needs (JSON-serialisable)."""
    from streamflow_mlops.model.tracking import log_trained_model

    extra_metrics: dict[str, float] = {}
    if truth is not None:
        ceiling = best_achievable_auc(truth, trained.val)
        extra_metrics = {"best_achievable_auc": ceiling, "val_auc_vs_best": trained.metrics["val_auc"] / ceiling}
    challenger = log_trained_model(trained, month=month, feature_service=feature_service, extra_metrics=extra_metrics)
    # With a label lag the month's training rows are an earlier period's: realized performance
    # compares this date with the labels of later months (pipelines/performance.py).
    labels_as_of = pd.Timestamp(trained.train[TIMESTAMP].max()).date().isoformat()
    configure_mlflow().set_model_version_tag(REGISTERED_MODEL, challenger["version"], "labels_as_of", labels_as_of)
    return {**challenger, "labels_as_of": labels_as_of}


def train_and_register(month: str | Month, seed: int, classifier: str = DEFAULT_CLASSIFIER) -> dict[str, Any]:
    """The month's point-in-time training set from Feast (the FeatureService), streamed into its
    evaluation rows and a seeded sample of at most `STREAMFLOW_TRAIN_MAX_ROWS` training rows
    (model/sampling.py), trained and registered."""
    from streamflow_mlops.config.settings import FEATURE_SERVICE, get_settings
    from streamflow_mlops.features.retrieval import iter_training_set
    from streamflow_mlops.features.store import feature_names
    from streamflow_mlops.model.sampling import TrainingSplit
    from streamflow_mlops.model.training import fit_challenger

    settings = get_settings()
    month = Month.parse(month)
    with tempfile.TemporaryDirectory(prefix="streamflow-train-") as tmp:
        split = TrainingSplit(seed=seed, max_rows=settings.train_max_rows, directory=Path(tmp))
        for chunk in iter_training_set(month, FEATURE_SERVICE, settings):
            split.add(chunk)
        train, val = split.frames()
        names = feature_names(FEATURE_SERVICE)
        trained = fit_challenger(
            train, val, seed, classifier=classifier, features=names, training_rows_available=split.training_rows_seen
        )
        return log_challenger(
            trained,
            month=month,
            feature_service=FEATURE_SERVICE,
            truth=read_truth(settings.drops_dir, month, settings.chunk_rows),
        )
