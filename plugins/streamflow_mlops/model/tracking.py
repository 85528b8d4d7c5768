"""The MLflow tracking edge: the client, the experiment, and logging a trained challenger as a run and a
registered version.

Every run logs params, metrics (AUC, F1, accuracy, train time), the pipeline with signature and input
example, the feature schema, the validation rows and plots (ROC, confusion matrix)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.schema import ENTITY, FEATURE_GROUPS, LABEL, feature_column
from streamflow_mlops.config.settings import EXPERIMENT, REGISTERED_MODEL, Settings, get_settings
from streamflow_mlops.model.holdout_rows import HoldoutRows
from streamflow_mlops.model.promotion import finite_or_none

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from streamflow_mlops.model.training import TrainedModel


MODEL_ARTIFACT = "model"


VALIDATION_ARTIFACT = "validation/validation_rows.parquet"


CHALLENGER_SCORE = "challenger_score"

# The rows an MLflow dataset's schema and digest are computed from (MLflow's own digest reads 10,000).
DATASET_HEAD_ROWS = 10_000


# Modules whose types we trust when skops reloads our own pipelines; anything else in a pickle
# means something unexpected got into the model and it should not be saved as trusted.
TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.", "builtins.")


def configure_mlflow(settings: Settings | None = None) -> MlflowClient:
    """Point this process's MLflow at the stack's tracking/registry URI and return a client."""
    import mlflow
    from mlflow import MlflowClient

    uri = (settings or get_settings()).mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, settings: Settings | None = None, name: str = EXPERIMENT) -> str:
    """The experiment's id (`streamflow` by default), creating it on first use.

    Talking to the database directly (no MLflow server), artifacts would otherwise land in
    `./mlruns` of whatever directory the worker runs in; they go under the state dir instead.
    """
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    served = settings.mlflow_tracking_uri.startswith(("http://", "https://"))
    location = None if served else settings.mlflow_artifacts_dir.resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another worker created it between our look-up and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def skops_trusted_types(pipeline: Any) -> list[str]:
    """The types skops must be told to trust to reload this pipeline (MLflow 3 saves sklearn
    models with skops, which refuses unknown types such as tree internals by default)."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    foreign = [name for name in untrusted if not name.startswith(TRUSTED_MODULES)]
    if foreign:
        raise ValueError(f"pipeline holds types outside {TRUSTED_MODULES}: {foreign}")
    return untrusted


def pip_requirements() -> list[str]:
    """What loading the model needs, pinned to this environment (skips MLflow's slow inference)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")]


def feature_schema(features: list[str]) -> dict[str, Any]:
    return {
        "entity": ENTITY,
        "label": LABEL,
        "features": [{"name": f, **asdict(feature_column(f))} for f in features],
    }


def _training_source(feature_service: str, month: Month) -> Any:
    from mlflow.data.dataset_source import DatasetSource

    class FeatureServiceSource(DatasetSource):
        """Where a training set comes from: the FeatureService over the warehouse's point-in-time
        snapshot tables at an as_of. Loading it again rebuilds the same set through Feast."""

        def __init__(self, spec: dict[str, Any]):
            self.spec = spec

        @staticmethod
        def _get_source_type() -> str:
            return "streamflow_feature_service"

        def load(self) -> pd.DataFrame:
            from streamflow_mlops.features.retrieval import build_training_set

            return build_training_set(Month.parse(self.spec["month"]), self.spec["feature_service"])

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> FeatureServiceSource:
            raise NotImplementedError("built from a spec, never resolved from a string")

        def to_dict(self) -> dict[str, Any]:
            return dict(self.spec)

        @classmethod
        def from_dict(cls, source_dict: dict[str, Any]) -> FeatureServiceSource:
            return cls(dict(source_dict))

    return FeatureServiceSource(
        {
            "feature_service": feature_service,
            "month": month.name,
            "as_of": month.as_of.isoformat(),
            "snapshot_tables": [group.table for group in FEATURE_GROUPS],
            "labels_table": "labels",
        }
    )


def _dataset(rows: HoldoutRows, source: Any, name: str) -> Any:
    """The rows as an MLflow dataset: schema and digest from the first rows (as MLflow's own
    digest), the profile of all of them, without holding them all (a month's holdout is millions)."""
    from mlflow.data.digest_utils import compute_pandas_digest, get_normalized_md5_digest
    from mlflow.data.pandas_dataset import PandasDataset

    total, width = rows.rows, len(rows.columns)

    class RowsDataset(PandasDataset):
        @property
        def profile(self) -> dict[str, int]:
            return {"num_rows": total, "num_elements": total * width}

    head = rows.head(DATASET_HEAD_ROWS)
    digest = get_normalized_md5_digest([compute_pandas_digest(head).encode(), str(total).encode()])
    return RowsDataset(df=head, source=source, targets=LABEL, name=name, digest=digest)


def _log_plots(trained: TrainedModel) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    labels = trained.val.column(LABEL)
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(labels, trained.val_scores, ax=ax, name=trained.classifier)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title(f"ROC, validation (AUC {trained.metrics['val_auc']:.3f})")
    mlflow.log_figure(fig, "plots/roc_curve.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    predicted = (trained.val_scores >= trained.threshold).astype(int)
    ConfusionMatrixDisplay.from_predictions(labels, predicted, ax=ax, display_labels=["stay", "churn"], colorbar=False)
    ax.set_title(f"Confusion matrix at threshold {trained.threshold:.3f}")
    mlflow.log_figure(fig, "plots/confusion_matrix.png")
    plt.close(fig)


def run_identity(month: Month, feature_service: str) -> dict[str, str]:
    """What the run and the version are about: tags and params of both."""
    return {"month": month.name, "as_of": month.as_of.isoformat(), "feature_service": feature_service}


def version_tags(trained: TrainedModel, identity: dict[str, str], run_id: str, val_auc: float) -> dict[str, str]:
    """The new version's tags: what it is, and a decision still pending."""
    return {
        **identity,
        "decision": "pending",
        "reason": "awaiting comparison with the champion",
        "run_id": run_id,
        "model": trained.classifier,
        "seed": str(trained.seed),
        "threshold": repr(trained.threshold),
        "val_auc": repr(val_auc),
    }


def challenger_summary(
    trained: TrainedModel, version: str, run_id: str, identity: dict[str, str], metrics: dict[str, float]
) -> dict[str, Any]:
    """The JSON-able challenger the decision step reads."""
    return {
        "version": str(version),
        "run_id": run_id,
        **identity,
        "seed": trained.seed,
        "model": trained.classifier,
        "threshold": trained.threshold,
        "val_auc": metrics["val_auc"],
        "best_achievable_auc": finite_or_none(metrics.get("best_achievable_auc")),
        "metrics": {k: finite_or_none(v) for k, v in metrics.items()},
    }


def _log_datasets(trained: TrainedModel, month: Month, feature_service: str) -> None:
    """The training and validation rows as the run's dataset inputs, both from the FeatureService."""
    import mlflow

    source = _training_source(feature_service, month)
    for context, rows in (("training", HoldoutRows.of(trained.train)), ("validation", trained.val)):
        mlflow.log_input(_dataset(rows, source, f"{month}-{context}"), context=context)


def _log_validation_rows(trained: TrainedModel) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        # The champion is later scored on exactly these rows, so they travel with the run.
        path = Path(tmp) / Path(VALIDATION_ARTIFACT).name
        trained.val.write(path, extra={CHALLENGER_SCORE: trained.val_scores})
        mlflow.log_artifact(str(path), artifact_path=str(Path(VALIDATION_ARTIFACT).parent))


def _log_model(trained: TrainedModel, feature_service: str) -> str:
    """The pipeline as the run's MLflow model; returns its model URI."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = trained.val.head(5)[trained.features]
    model_info = mlflow.sklearn.log_model(
        trained.pipeline,
        name=MODEL_ARTIFACT,
        signature=infer_signature(example, trained.pipeline.predict_proba(example)),
        input_example=example,
        # The service wants probabilities; pyfunc's default `predict` would give 0/1.
        pyfunc_predict_fn="predict_proba",
        serialization_format="skops",
        skops_trusted_types=skops_trusted_types(trained.pipeline),
        pip_requirements=pip_requirements(),
        metadata={"threshold": trained.threshold, "feature_service": feature_service, "features": trained.features},
    )
    return model_info.model_uri


def log_trained_model(
    trained: TrainedModel,
    *,
    month: Month,
    feature_service: str,
    extra_metrics: dict[str, float] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One run of the `streamflow` experiment for a trained model, registered as a new version."""
    import mlflow

    settings = settings or get_settings()
    experiment_id = ensure_experiment(configure_mlflow(settings), settings)
    metrics = {**trained.metrics, **(extra_metrics or {})}
    identity = run_identity(month, feature_service)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{month}-{trained.classifier}-seed{trained.seed}"
    ) as run:
        mlflow.set_tags(identity)
        mlflow.log_params({**trained.params, **identity})
        mlflow.log_metrics(metrics)
        _log_datasets(trained, month, feature_service)
        mlflow.log_dict(feature_schema(trained.features), "feature_schema.json")
        _log_validation_rows(trained)
        _log_plots(trained)
        model_uri = _log_model(trained, feature_service)
        run_id = run.info.run_id
    tags = version_tags(trained, identity, run_id, metrics["val_auc"])
    version = mlflow.register_model(model_uri, REGISTERED_MODEL, tags=tags).version
    log.info("registered %s version %s (run %s, val_auc %.4f)", REGISTERED_MODEL, version, run_id, metrics["val_auc"])
    return challenger_summary(trained, version, run_id, identity, metrics)
