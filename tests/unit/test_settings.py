from __future__ import annotations

import pytest

from streamflow_mlops.config.settings import get_settings
from tests.conftest import settings_from


def test_embedded_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("STREAMFLOW_DB_URL", raising=False)
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path))
    get_settings.cache_clear()
    s = get_settings()
    assert s.embedded and s.db_url.startswith("postgresql://postgres@127.0.0.1:")
    assert s.airflow_db_url.endswith("/airflow") and s.mlflow_backend_url.endswith("/mlflow")
    assert "sqlite" in s.online_store and str(tmp_path) in s.online_store
    get_settings.cache_clear()


def test_existing_services(monkeypatch):
    monkeypatch.setenv("STREAMFLOW_DB_URL", "postgresql://sf:secret@db.internal:6543/streamflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    get_settings.cache_clear()
    s = get_settings()
    assert not s.embedded
    assert s.airflow_db_url == "postgresql+psycopg2://sf:secret@db.internal:6543/airflow"
    env = s.client_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert env["STREAMFLOW_PG_HOST"] == "db.internal" and env["STREAMFLOW_PG_PORT"] == "6543"
    assert env["AIRFLOW_CONN_STREAMFLOW_WAREHOUSE"] == s.db_url
    get_settings.cache_clear()


def test_settings_are_read_on_first_use_and_cached(monkeypatch):
    monkeypatch.setenv("STREAMFLOW_DB_URL", "postgresql://a@h/streamflow")
    get_settings.cache_clear()
    first = get_settings()
    monkeypatch.setenv("STREAMFLOW_DB_URL", "postgresql://b@h/streamflow")
    assert get_settings() is first
    get_settings.cache_clear()


def test_an_empty_variable_means_the_default_and_row_counts_may_group_digits(monkeypatch):
    env = {"STREAMFLOW_AIRFLOW_PORT": "", "STREAMFLOW_CHUNK_ROWS": "50_000", "STREAMFLOW_APPROVAL": " Human "}
    s = settings_from(env, monkeypatch)
    assert s.airflow_port == 8080 and s.chunk_rows == 50_000 and s.approval == "human"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMFLOW_CHUNK_ROWS", "0"),
        ("STREAMFLOW_TRAIN_MAX_ROWS", "lots"),
        ("STREAMFLOW_VALUE_HORIZON_MONTHS", "inf"),
        ("STREAMFLOW_SERVICE_WORKERS", "-1"),
    ],
)
def test_a_refused_value_names_its_variable_and_prints_no_secret(monkeypatch, name, value):
    with pytest.raises(ValueError, match=name) as refused:
        settings_from(
            {"STREAMFLOW_DB_URL": "postgresql://sf:s3cret@db.internal:6543/streamflow", name: value}, monkeypatch
        )
    assert "s3cret" not in str(refused.value)


def test_credentials_stay_out_of_the_settings_repr(monkeypatch):
    env = {
        "STREAMFLOW_DB_URL": "postgresql://sf:s3cret@db.internal:6543/streamflow",
        "STREAMFLOW_NOTIFY_WEBHOOK_URL": "https://hooks.example/T1/s3cret",
    }
    settings = settings_from(env, monkeypatch)
    assert "s3cret" not in repr(settings) and "s3cret" in settings.db_url
