"""The MLflow edge: log a challenger, decide against the champion, move the alias, import to BentoML.

The registered model is `streamflow_churn`; the serving model is its alias `champion` (stages
are deprecated and never used). Every version carries the tags `month`, `as_of`,
`feature_service`, `decision`, `reason`. The champion is also the newest `streamflow_churn`
model in the BentoML store, tagged `streamflow_churn:v<mlflow version>`, with labels linking it
back to MLflow; it is imported *before* the alias moves, so a service that follows the alias
never looks for a model the store does not have yet.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from streamflow_mlops.promotion import paired_bootstrap_auc_gain, should_promote
from streamflow_mlops.schema import ENTITY, FEATURE_GROUPS, LABEL, feature_column
from streamflow_mlops.settings import CHAMPION_ALIAS, EXPERIMENT, REGISTERED_MODEL, Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from streamflow_mlops.training import TrainedModel

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
VALIDATION_ARTIFACT = "validation/validation_rows.parquet"
CHALLENGER_SCORE = "challenger_score"
# Modules whose types we trust when skops reloads our own pipelines; anything else in a pickle
# means something unexpected got into the model and it should not be saved as trusted.
TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.", "builtins.")


class UnknownVersionError(LookupError):
    """A model version (or a previous champion) that the registry does not have."""


def bento_tag(mlflow_version: str | int) -> str:
    """Deterministic BentoML tag of an MLflow version, so re-imports are idempotent."""
    return f"{REGISTERED_MODEL}:v{mlflow_version}"


def model_uri(version: str | int) -> str:
    return f"models:/{REGISTERED_MODEL}/{version}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def configure_mlflow(settings: Settings | None = None) -> MlflowClient:
    """Point this process's MLflow at the stack's tracking/registry URI and return a client."""
    import mlflow
    from mlflow import MlflowClient

    uri = (settings or get_settings()).mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, settings: Settings | None = None) -> str:
    """The `streamflow` experiment's id, creating it on first use.

    Talking to the database directly (no MLflow server), artifacts would otherwise land in
    `./mlruns` of whatever directory the worker runs in; they go under the state dir instead.
    """
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    served = settings.mlflow_tracking_uri.startswith(("http://", "https://"))
    location = None if served else settings.mlflow_artifacts_dir.resolve().as_uri()
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except MlflowException:
        # Another worker created it between our look-up and create.
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


# ---------------------------------------------------------------- logging a challenger


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


def _training_source(feature_service: str, month: str, as_of: date) -> Any:
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
            from streamflow_mlops.features import build_training_set

            return build_training_set(self.spec["month"], self.spec["feature_service"])

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
            "month": month,
            "as_of": as_of.isoformat(),
            "snapshot_tables": [group.table for group in FEATURE_GROUPS],
            "labels_table": "labels",
        }
    )


def _log_plots(trained: TrainedModel) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    labels = trained.val[LABEL].to_numpy()
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


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def log_trained_model(
    trained: TrainedModel,
    *,
    month: str,
    as_of: date,
    feature_service: str,
    extra_metrics: dict[str, float] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One run of the `streamflow` experiment for a trained model, registered as a new version."""
    import mlflow
    import mlflow.data
    import mlflow.sklearn
    from mlflow.models import infer_signature

    settings = settings or get_settings()
    client = configure_mlflow(settings)
    experiment_id = ensure_experiment(client, settings)
    metrics = {**trained.metrics, **(extra_metrics or {})}
    features = trained.features
    example = trained.val[features].head(5)
    identity = {"month": month, "as_of": as_of.isoformat(), "feature_service": feature_service}

    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{month}-{trained.classifier}-seed{trained.seed}"
    ) as run:
        mlflow.set_tags(identity)
        mlflow.log_params({**trained.params, **identity})
        mlflow.log_metrics(metrics)
        source = _training_source(feature_service, month, as_of)
        for context, rows in (("training", trained.train), ("validation", trained.val)):
            dataset = mlflow.data.from_pandas(rows, source=source, targets=LABEL, name=f"{month}-{context}")
            mlflow.log_input(dataset, context=context)
        mlflow.log_dict(feature_schema(features), "feature_schema.json")
        with tempfile.TemporaryDirectory() as tmp:
            # The champion is later scored on exactly these rows, so they travel with the run.
            path = Path(tmp) / Path(VALIDATION_ARTIFACT).name
            trained.val.assign(**{CHALLENGER_SCORE: trained.val_scores}).to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=str(Path(VALIDATION_ARTIFACT).parent))
        _log_plots(trained)
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
            metadata={"threshold": trained.threshold, "feature_service": feature_service, "features": features},
        )
        run_id = run.info.run_id

    tags = {
        **identity,
        "decision": "pending",
        "reason": "awaiting comparison with the champion",
        "run_id": run_id,
        "model": trained.classifier,
        "seed": str(trained.seed),
        "threshold": repr(trained.threshold),
        "val_auc": repr(metrics["val_auc"]),
    }
    version = mlflow.register_model(model_info.model_uri, REGISTERED_MODEL, tags=tags).version
    log.info("registered %s version %s (run %s, val_auc %.4f)", REGISTERED_MODEL, version, run_id, metrics["val_auc"])
    return {
        "version": str(version),
        "run_id": run_id,
        **identity,
        "seed": trained.seed,
        "model": trained.classifier,
        "threshold": trained.threshold,
        "val_auc": metrics["val_auc"],
        "best_achievable_auc": _finite(metrics.get("best_achievable_auc")),
        "metrics": {k: _finite(v) for k, v in metrics.items()},
    }


# ---------------------------------------------------------------- champion vs challenger


def champion_version(client: MlflowClient) -> ModelVersion | None:
    """The version the `champion` alias points at, or None before the first promotion."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def validation_rows(run_id: str) -> pd.DataFrame:
    """The challenger's validation rows (features, label, its scores) logged with its run."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_ARTIFACT, dst_path=tmp)
        return pd.read_parquet(path)


def score_version(version: str, rows: pd.DataFrame) -> np.ndarray | None:
    """Churn probabilities of a registered version on `rows`; None when the rows lack a feature it
    needs (a champion trained on another FeatureService can't be judged on these rows)."""
    import mlflow.sklearn

    pipeline = mlflow.sklearn.load_model(model_uri(version))
    needed = list(getattr(pipeline, "feature_names_in_", []))
    missing = [name for name in needed if name not in rows.columns]
    if not needed or missing:
        log.warning("version %s needs features %s absent from the challenger's rows", version, missing or "(unknown)")
        return None
    return pipeline.predict_proba(rows[needed])[:, 1]


def evaluate_and_decide(challenger: dict[str, Any], delta: float) -> dict[str, Any]:
    """Score the champion on the challenger's validation rows and decide; the decision, both AUCs,
    the gain and its bootstrap interval become tags on the challenger version."""
    from sklearn.metrics import roc_auc_score

    client = configure_mlflow()
    version = str(challenger["version"])
    rows = validation_rows(challenger["run_id"])
    labels = rows[LABEL].to_numpy()
    challenger_auc = float(roc_auc_score(labels, rows[CHALLENGER_SCORE]))
    champion = champion_version(client)
    champion_auc: float | None = None
    bootstrap = None
    if champion is not None and str(champion.version) == version:
        raise ValueError(f"version {version} is already the champion")
    if champion is not None:
        champion_scores = score_version(str(champion.version), rows)
        if champion_scores is None or not np.all(np.isfinite(champion_scores)):
            champion_auc = float("nan")
        else:
            champion_auc = float(roc_auc_score(labels, champion_scores))
            bootstrap = paired_bootstrap_auc_gain(
                labels, rows[CHALLENGER_SCORE].to_numpy(), champion_scores, seed=int(challenger.get("seed", 0))
            )
    decision = should_promote(challenger_auc, champion_auc, delta, bootstrap)
    tags = {
        "decision": "promote" if decision.promote else "keep_champion",
        "reason": decision.reason,
        "delta": repr(delta),
        "challenger_auc": repr(challenger_auc),
        "champion_version": str(champion.version) if champion else "",
        "champion_auc": repr(champion_auc) if champion_auc is not None else "",
        "auc_gain": repr(bootstrap.gain) if bootstrap else "",
        "auc_gain_ci_low": repr(bootstrap.ci_low) if bootstrap else "",
        "auc_gain_ci_high": repr(bootstrap.ci_high) if bootstrap else "",
        "auc_gain_ci_level": repr(bootstrap.confidence) if bootstrap else "",
    }
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)
    log.info("version %s vs champion %s: %s", version, str(champion.version) if champion else None, decision.reason)
    return {
        **challenger,
        "promote": decision.promote,
        "reason": decision.reason,
        "delta": delta,
        "challenger_auc": challenger_auc,
        "champion_version": str(champion.version) if champion else None,
        "champion_auc": _finite(champion_auc),
        "auc_gain": bootstrap.gain if bootstrap else None,
        "auc_gain_ci": [bootstrap.ci_low, bootstrap.ci_high] if bootstrap else None,
    }


# ---------------------------------------------------------------- BentoML store


@contextmanager
def bento_model_store(settings: Settings | None = None) -> Iterator[None]:
    """Pin BentoML's model store to settings.bentoml_home for the block.

    BentoML reads BENTOML_HOME once per process and caches the store; a long-lived worker or a
    test session that changes its settings would otherwise write to the first home it saw.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home = (settings or get_settings()).bentoml_home / "models"
    home.mkdir(parents=True, exist_ok=True)
    with BentoMLContainer.model_store.patch(ModelStore(str(home))):
        yield


def import_to_bentoml(client: MlflowClient, version: str, settings: Settings | None = None) -> str:
    """Import a registered version into the BentoML store as `streamflow_churn:v<version>` and make
    it the newest `streamflow_churn` there; a no-op when it already is."""
    import bentoml
    from bentoml.exceptions import NotFound

    model_version = client.get_model_version(REGISTERED_MODEL, version)
    tags = model_version.tags
    tag = bento_tag(version)
    labels = {
        "registered_model": REGISTERED_MODEL,
        "mlflow_version": str(version),
        "run_id": model_version.run_id,
        "month": tags.get("month", ""),
        "as_of": tags.get("as_of", ""),
        "feature_service": tags.get("feature_service", ""),
        "threshold": tags.get("threshold", ""),
    }
    metadata = {
        "mlflow_model_uri": model_uri(version),
        "threshold": float(tags["threshold"]),
        "val_auc": float(tags.get("val_auc", "nan")),
    }
    with bento_model_store(settings):
        try:
            models = sorted(bentoml.models.list(REGISTERED_MODEL), key=lambda m: m.info.creation_time)
        except NotFound:  # BentoML raises rather than return [] before the first import of a name
            models = []
        if models and str(models[-1].tag) == tag:
            return tag
        try:
            bentoml.models.get(tag)
            # Imported before, but a newer model has been imported since (a rollback): import it
            # again so "newest in the store" keeps meaning "champion" for a service without MLflow.
            bentoml.models.delete(tag)
        except NotFound:
            pass
        bentoml.mlflow.import_model(tag, model_uri=model_uri(version), labels=labels, metadata=metadata)
    log.info("imported %s into the BentoML store", tag)
    return tag


# ---------------------------------------------------------------- moving the alias


def _set_tags(client: MlflowClient, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)


def set_champion(client: MlflowClient, version: str, tags: dict[str, str]) -> dict[str, Any]:
    """Import `version` into BentoML, point the alias at it, tag it and the version it replaces."""
    previous = champion_version(client)
    bento = import_to_bentoml(client, version)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    now = utc_now()
    if previous is not None and str(previous.version) != version:
        _set_tags(client, str(previous.version), {"replaced_at": now, "replaced_by": version})
    _set_tags(client, version, {"champion_since": now, **tags})
    model_version = client.get_model_version(REGISTERED_MODEL, version)
    return {
        "version": str(version),
        "month": model_version.tags.get("month", ""),
        "as_of": model_version.tags.get("as_of", ""),
        "run_id": model_version.run_id,
        "bento_tag": bento,
        "previous_version": str(previous.version) if previous else None,
    }


def promote_and_import(decision: dict[str, Any]) -> dict[str, Any]:
    """Make the challenger of a `promote` decision the champion (alias + BentoML import)."""
    if not decision.get("promote"):
        raise ValueError(f"decision for version {decision.get('version')} is not to promote: {decision.get('reason')}")
    client = configure_mlflow()
    version = str(decision["version"])
    previous = champion_version(client)
    champion = set_champion(
        client, version, {"previous_champion": str(previous.version) if previous else "", "decision": "promoted"}
    )
    log.info("version %s is the champion (was %s)", version, champion["previous_version"])
    return champion


def _existing_versions(client: MlflowClient) -> list[str]:
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    return sorted((str(v.version) for v in versions), key=int)


def rollback_champion(version: str | int | None, by: str, reason: str) -> dict[str, Any]:
    """Point the alias at `version`, or at the version the current champion replaced, and
    re-import it; who and why become tags on it."""
    from mlflow.exceptions import MlflowException

    client = configure_mlflow()
    current = champion_version(client)
    existing = _existing_versions(client)
    if version in (None, ""):
        if current is None:
            raise UnknownVersionError(f"{REGISTERED_MODEL} has no champion to roll back from; versions: {existing}")
        target = current.tags.get("previous_champion", "")
        if not target:
            raise UnknownVersionError(
                f"champion version {current.version} replaced no earlier champion; pass a version (one of {existing})"
            )
    else:
        target = str(version).strip()
        try:
            client.get_model_version(REGISTERED_MODEL, target)
        except MlflowException as error:
            raise UnknownVersionError(
                f"{REGISTERED_MODEL} has no version {target!r}; versions that exist: {existing}"
            ) from error
    champion = set_champion(
        client,
        target,
        {
            "rollback_by": by,
            "rollback_at": utc_now(),
            "rollback_reason": reason,
            "rolled_back_from": str(current.version) if current else "",
        },
    )
    log.info(
        "rolled %s back to version %s (from %s) by %s: %s",
        REGISTERED_MODEL,
        target,
        champion["previous_version"],
        by,
        reason,
    )
    return champion
