"""`RegisteredVersion`: a registered version read from its tags (or the BentoML labels written from
them), with the defaults of a missing tag decided in one place."""

from __future__ import annotations

from datetime import date

import pytest

from streamflow_mlops.config.months import Month
from streamflow_mlops.config.settings import FEATURE_SERVICE
from streamflow_mlops.model.bento_import import bento_labels, bento_metadata
from streamflow_mlops.model.registry import DEFAULT_THRESHOLD, RegisteredVersion
from streamflow_mlops.serving.champion import champion_labels

TAGS = {
    "month": "month_003",
    "as_of": "2024-04-30",
    "labels_as_of": "2024-03-31",
    "feature_service": "churn_model_v2",
    "threshold": "0.37",
    "val_auc": "0.81",
}


def test_the_tags_become_typed_values():
    version = RegisteredVersion.from_tags(7, TAGS, run_id="abc")
    assert (version.version, version.run_id, version.month, version.month_name) == ("7", "abc", Month(3), "month_003")
    assert (version.as_of, version.labels_as_of) == ("2024-04-30", date(2024, 3, 31))
    assert (version.feature_service, version.threshold, version.val_auc) == ("churn_model_v2", 0.37, 0.81)
    assert version.tags == TAGS


@pytest.mark.parametrize("missing", [{}, {key: "" for key in TAGS}])
def test_a_version_without_tags_gets_the_defaults(missing):
    version = RegisteredVersion.from_tags("1", missing)
    assert (version.month, version.month_name, version.as_of, version.labels_as_of) == (None, "", "", None)
    assert (version.feature_service, version.threshold, version.val_auc) == (FEATURE_SERVICE, DEFAULT_THRESHOLD, None)


def test_labels_as_of_falls_back_to_the_months_as_of():
    assert RegisteredVersion.from_tags("1", {"as_of": "2024-04-30"}).labels_as_of == date(2024, 4, 30)


def test_the_pipeline_is_loaded_once(monkeypatch):
    import mlflow.sklearn

    loads = []
    monkeypatch.setattr(mlflow.sklearn, "load_model", lambda uri: loads.append(uri) or object())
    version = RegisteredVersion.from_tags("4", TAGS)
    assert version.pipeline() is version.pipeline()
    assert loads == ["models:/streamflow_churn/4"]


@pytest.mark.parametrize("tags", [TAGS, {"threshold": "0.42"}])
def test_the_bentoml_labels_read_back_as_the_registry_version(tags):
    version = RegisteredVersion.from_tags("5", tags, run_id="r")
    labels, metadata = bento_labels(version), bento_metadata(version)
    assert champion_labels(labels, metadata) == ("5", version.threshold, version.feature_service)
    assert champion_labels(labels, {}) == ("5", version.threshold, version.feature_service)
    assert labels["month"] == version.month_name and labels["run_id"] == "r"
