"""The BentoML model store: a registered MLflow version imported as `streamflow_churn:v<version>`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from streamflow_mlops.config.settings import REGISTERED_MODEL, Settings, get_settings
from streamflow_mlops.extensions.bentoml import pinned_model_store
from streamflow_mlops.model.registry import RegisteredVersion, bento_tag, load_version, model_uri

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mlflow import MlflowClient


@contextmanager
def bento_model_store(settings: Settings | None = None) -> Iterator[None]:
    """BentoML's model store at settings.bentoml_home for the block: a long-lived worker or a test
    session that changes its settings would otherwise write to the first home the process saw."""
    with pinned_model_store((settings or get_settings()).bentoml_home / "models"):
        yield


def bento_labels(registered: RegisteredVersion) -> dict[str, str]:
    """What links an imported model back to MLflow, as strings (serving/champion.py `champion_labels` reads them)."""
    return {
        "registered_model": REGISTERED_MODEL,
        "mlflow_version": registered.version,
        "run_id": registered.run_id,
        "month": registered.month_name,
        "as_of": registered.as_of,
        "feature_service": registered.feature_service,
        "threshold": repr(registered.threshold),
    }


def bento_metadata(registered: RegisteredVersion) -> dict[str, object]:
    """The typed values beside the labels (they win over a label of the same name)."""
    return {
        "mlflow_model_uri": model_uri(registered.version),
        "threshold": registered.threshold,
        "val_auc": registered.val_auc if registered.val_auc is not None else float("nan"),
    }


def import_to_bentoml(client: MlflowClient, version: str, settings: Settings | None = None) -> str:
    """Import a registered version into the BentoML store as `streamflow_churn:v<version>` and make
    it the newest `streamflow_churn` there; a no-op when it already is."""
    import bentoml
    from bentoml.exceptions import NotFound

    registered = load_version(client, version)
    tag = bento_tag(version)
    labels, metadata = bento_labels(registered), bento_metadata(registered)
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
