"""Both database paths against a real server: the embedded wheel and an existing server."""

from __future__ import annotations

import psycopg

from streamflow_mlops.config.settings import get_settings, replace_database
from streamflow_mlops.data.warehouse import create_schema
from streamflow_mlops.platform.embedded import is_accepting, stop_embedded, up


def test_embedded_start_reuse_stop(pg_server, tmp_path, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.delenv("STREAMFLOW_DB_URL", raising=False)
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("STREAMFLOW_PG_EMBEDDED_PORT", str(free_port()))
    get_settings.cache_clear()
    settings = get_settings()
    try:
        url = up(settings)
        assert up(settings) == url  # a second start reuses the running server
        with psycopg.connect(replace_database(url, "postgres")) as conn:
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert {"streamflow", "airflow", "mlflow"} <= names
        env = (settings.state_dir / "env").read_text()
        assert f"export STREAMFLOW_DB_URL={url}" in env and "MLFLOW_TRACKING_URI" in env
    finally:
        stop_embedded(settings)
        get_settings.cache_clear()
    assert not is_accepting(settings.db_url)


def test_existing_server_is_used_not_started(stack_env):
    settings = stack_env
    assert not settings.embedded
    url = up(settings)
    assert url == settings.db_url
    assert not settings.pgdata.exists()  # nothing embedded was started
    with psycopg.connect(url) as conn:
        create_schema(conn)
        create_schema(conn)  # idempotent
        tables = {
            r[0]
            for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'streamflow'")
        }
    assert {"users", "labels", "usage_agg_30d_snapshots", "ingestion_runs", "prediction_log"} <= tables
