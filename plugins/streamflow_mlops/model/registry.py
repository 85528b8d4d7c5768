"""The MLflow model registry: version names and URIs, the champion alias, scoring a registered version.

The registered model is `streamflow_churn`; the serving model is its alias `champion` (stages
are deprecated and never used). Every version carries the tags `month`, `as_of`,
`feature_service`, `decision`, `reason`. The champion is also the newest `streamflow_churn`
model in the BentoML store, tagged `streamflow_churn:v<mlflow version>`, with labels linking it
back to MLflow; it is imported *before* the alias moves, so a service that follows the alias
never looks for a model the store does not have yet.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from streamflow_mlops.config.settings import CHAMPION_ALIAS, REGISTERED_MODEL, SHADOW_ALIAS
from streamflow_mlops.model.holdout_rows import HoldoutRows
from streamflow_mlops.model.tracking import VALIDATION_ARTIFACT

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


log = logging.getLogger(__name__)


class UnknownVersionError(LookupError):
    """A model version (or a previous champion) that the registry does not have."""


def bento_tag(mlflow_version: str | int) -> str:
    """Deterministic BentoML tag of an MLflow version, so re-imports are idempotent."""
    return f"{REGISTERED_MODEL}:v{mlflow_version}"


def model_uri(version: str | int) -> str:
    return f"models:/{REGISTERED_MODEL}/{version}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """A client on one tracking/registry URI, leaving the process-wide MLflow URIs alone."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def aliased_version(client: MlflowClient, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None when the alias (or the registered model) is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champion_version(client: MlflowClient) -> ModelVersion | None:
    """The version the `champion` alias points at, or None before the first promotion."""
    return aliased_version(client, CHAMPION_ALIAS)


def shadow_version(client: MlflowClient) -> ModelVersion | None:
    """The version the `shadow` alias points at (scored beside the champion by the service), if any."""
    return aliased_version(client, SHADOW_ALIAS)


def set_shadow(client: MlflowClient, version: str) -> None:
    """Point the `shadow` alias at `version`: the service scores it beside the champion from its next poll."""
    client.set_registered_model_alias(REGISTERED_MODEL, SHADOW_ALIAS, str(version))


def clear_shadow(client: MlflowClient, version: str) -> bool:
    """Remove the `shadow` alias if it still points at `version` (a later review or a person may
    have moved it since: theirs stays); True when it was removed."""
    current = shadow_version(client)
    if current is None or str(current.version) != str(version):
        return False
    client.delete_registered_model_alias(REGISTERED_MODEL, SHADOW_ALIAS)
    return True


@contextmanager
def validation_file(run_id: str) -> Iterator[HoldoutRows]:
    """The challenger's validation rows (features, label, its scores) logged with its run, as a
    local Parquet file read in batches (model/holdout_rows.py), removed on exit."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        yield HoldoutRows.read(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_ARTIFACT, dst_path=tmp)
        )


def validation_rows(run_id: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The challenger's validation rows (only `columns`, when given), whole."""
    with validation_file(run_id) as rows:
        return rows.frame(columns)


def score_version(version: str, rows: pd.DataFrame | HoldoutRows) -> np.ndarray | None:
    """Churn probabilities of a registered version on `rows`, a batch at a time; None when the
    rows lack a feature it needs (a champion trained on another FeatureService can't be judged on
    these rows)."""
    import mlflow.sklearn

    pipeline = mlflow.sklearn.load_model(model_uri(version))
    needed = list(getattr(pipeline, "feature_names_in_", []))
    missing = [name for name in needed if name not in rows.columns]
    if not needed or missing:
        log.warning("version %s needs features %s absent from the challenger's rows", version, missing or "(unknown)")
        return None
    from streamflow_mlops.model.training import predict_scores

    return predict_scores(pipeline, rows)


def existing_versions(client: MlflowClient) -> list[str]:
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    return sorted((str(v.version) for v in versions), key=int)
