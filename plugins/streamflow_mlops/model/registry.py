"""The MLflow model registry: version names and URIs, the champion alias, scoring a registered version.

The registered model is `streamflow_churn`; the serving model is its alias `champion` (stages
are deprecated and never used). Every version carries the tags `month`, `as_of`,
`feature_service`, `decision`, `reason`; `RegisteredVersion` is how every caller reads them, so the
defaults of a missing tag (the FeatureService, the threshold) are decided here only. The champion
is also the newest `streamflow_churn` model in the BentoML store, tagged
`streamflow_churn:v<mlflow version>`, with labels linking it back to MLflow; it is imported *before*
the alias moves, so a service that follows the alias never looks for a model the store does not
have yet.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.settings import CHAMPION_ALIAS, FEATURE_SERVICE, REGISTERED_MODEL, SHADOW_ALIAS
from streamflow_mlops.model.holdout_rows import HoldoutRows
from streamflow_mlops.model.tracking import VALIDATION_ARTIFACT

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


log = logging.getLogger(__name__)

# The decision threshold of a version that records none.
DEFAULT_THRESHOLD = 0.5


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


def feature_service_or_default(name: str | None) -> str:
    """The FeatureService a version (or a service with no champion yet) reads: its own, else the
    default one, which every version predating the `feature_service` tag was trained on."""
    return str(name or FEATURE_SERVICE)


def _present(tags: Mapping[str, Any], key: str) -> Any:
    value = tags.get(key)
    return None if value is None or value == "" else value


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered version as its tags (or the BentoML labels copied from them) describe it, with
    the defaults of a missing tag applied; `pipeline()` loads its sklearn pipeline once, on first use."""

    version: str
    run_id: str
    month: Month | None
    as_of: str
    labels_as_of: date | None
    feature_service: str
    threshold: float
    val_auc: float | None
    tags: Mapping[str, Any]
    _loaded: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_tags(cls, version: str | int, tags: Mapping[str, Any], run_id: str = "") -> RegisteredVersion:
        """`labels_as_of`: the labels the version trained on (the tag, else its month's `as_of`)."""
        month = _present(tags, "month")
        labels_as_of = _present(tags, "labels_as_of") or _present(tags, "as_of")
        threshold = _present(tags, "threshold")
        val_auc = _present(tags, "val_auc")
        return cls(
            version=str(version),
            run_id=run_id or "",
            month=Month.parse(month) if month is not None else None,
            as_of=str(_present(tags, "as_of") or ""),
            labels_as_of=date.fromisoformat(str(labels_as_of)) if labels_as_of is not None else None,
            feature_service=feature_service_or_default(_present(tags, "feature_service")),
            threshold=float(threshold) if threshold is not None else DEFAULT_THRESHOLD,
            val_auc=float(val_auc) if val_auc is not None else None,
            tags=dict(tags),
        )

    @classmethod
    def of(cls, model_version: ModelVersion) -> RegisteredVersion:
        return cls.from_tags(model_version.version, model_version.tags, model_version.run_id)

    @property
    def month_name(self) -> str:
        """The `month` tag as written, "" when the version has none."""
        return self.month.name if self.month is not None else ""

    def pipeline(self) -> Any:
        """The version's sklearn pipeline from the registry, loaded on the first call and kept."""
        if "pipeline" not in self._loaded:
            import mlflow.sklearn

            self._loaded["pipeline"] = mlflow.sklearn.load_model(model_uri(self.version))
        return self._loaded["pipeline"]


def load_version(client: MlflowClient, version: str | int) -> RegisteredVersion:
    """A registered version of `streamflow_churn` (raises MLflow's error when there is none)."""
    return RegisteredVersion.of(client.get_model_version(REGISTERED_MODEL, str(version)))


def load_champion(client: MlflowClient) -> RegisteredVersion | None:
    """The version behind the `champion` alias, or None before the first promotion."""
    version = champion_version(client)
    return None if version is None else RegisteredVersion.of(version)


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


def score_pipeline(version: str, pipeline: Any, rows: pd.DataFrame | HoldoutRows) -> np.ndarray | None:
    """Churn probabilities of a version's loaded pipeline (`RegisteredVersion.pipeline()`) on `rows`, a
    batch at a time; None when the rows lack a feature it needs (a champion trained on another
    FeatureService can't be judged on these rows)."""
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
