"""Both database paths against a real server: the embedded wheel and an existing server."""

from __future__ import annotations

import stat
from urllib.parse import urlsplit

import psycopg
import pytest

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
        # A password is required on loopback and on the socket alike, and nobody else can read it.
        password = urlsplit(url).password
        assert password and len(password) >= 24
        for secret in (settings.embedded_pg_password_file, settings.state_dir / "env"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        port = urlsplit(url).port
        for dsn in (
            f"postgresql://postgres@127.0.0.1:{port}/postgres",
            f"postgresql://postgres:wrong@127.0.0.1:{port}/postgres",
            f"host={settings.pgdata} port={port} user=postgres dbname=postgres",
        ):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(dsn, connect_timeout=3).close()
        with psycopg.connect(replace_database(url, "postgres")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
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


def test_the_demo_knows_a_month_an_earlier_run_loaded_and_a_fresh_warehouse_has_none(stack_env):
    """A fresh database has no `ingestion_runs` yet (make demo's first run); a loaded month is found."""
    from datetime import UTC, datetime

    import psycopg

    from streamflow_mlops.config.months import Month
    from streamflow_mlops.data.ingest import record_run
    from streamflow_mlops.data.warehouse import create_schema
    from streamflow_mlops.platform.demo import Stack

    stack = Stack(stack_env)
    assert not stack.month_loaded("month_000")
    with psycopg.connect(stack_env.db_url) as conn:
        create_schema(conn)
        assert not stack.month_loaded("month_000")
        record_run(
            conn, month=Month(0), status="success", row_counts={}, failed=[], report_path=None,
            started_at=datetime.now(UTC),
        )  # fmt: skip
    assert stack.month_loaded("month_000") and not stack.month_loaded("month_001")
