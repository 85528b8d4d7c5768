"""The BentoML model store: a registered MLflow version imported as `streamflow_churn:v<version>`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from streamflow_mlops.config.settings import REGISTERED_MODEL, Settings, get_settings
from streamflow_mlops.model.registry import bento_tag, model_uri

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mlflow import MlflowClient


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
