"""Shared fixtures: a real PostgreSQL for the whole session, a fresh database per test.

With `STREAMFLOW_TEST_DB_URL` set, tests use that server (the "existing services" path);
otherwise they start the embedded server from the pip wheel, exactly as `make demo` does.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest

from streamflow_mlops.config.settings import Settings, get_settings, replace_database
from streamflow_mlops.platform.embedded import start_embedded, stop_embedded
from streamflow_mlops.platform.processes import Processes

REPO = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket stays bound until all are chosen, so none repeats."""
    with ExitStack() as sockets:
        bound = [sockets.enter_context(socket.socket()) for _ in range(count)]
        for s in bound:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in bound]


def free_port() -> int:
    return free_ports(1)[0]


# Every port a `Stack` (platform/demo.py) can listen on: the Settings field and the variable that
# sets it. tests/integration/test_stack_ports.py fails when Settings gains a port missing here.
STACK_PORTS = {
    "airflow_port": "STREAMFLOW_AIRFLOW_PORT",
    "mlflow_port": "STREAMFLOW_MLFLOW_PORT",
    "service_port": "STREAMFLOW_SERVICE_PORT",
    "evidently_port": "STREAMFLOW_EVIDENTLY_PORT",
    "embedded_pg_port": "STREAMFLOW_PG_EMBEDDED_PORT",
}


def listening_ports(processes: Processes) -> dict[int, str]:
    """The TCP ports the processes (and their children) listen on, each with the process's name."""
    import psutil

    ports: dict[int, str] = {}
    for name, proc in processes.running.items():
        parent = psutil.Process(proc.pid)
        for process in [parent, *parent.children(recursive=True)]:
            try:
                sockets = process.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            ports |= {s.laddr.port: name for s in sockets if s.status == psutil.CONN_LISTEN}
    return ports


def stack_port_env() -> dict[str, str]:
    """A distinct free port for every port of STACK_PORTS, as the environment variables that set them:
    a test stack never opens a default port, which a running `make demo` holds."""
    return dict(zip(STACK_PORTS.values(), map(str, free_ports(len(STACK_PORTS))), strict=True))


DISPOSABLE_FLAG = "STREAMFLOW_TEST_DB_DISPOSABLE"


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    """The settings a process with `env` on top of this one's reads (a fresh, uncached read)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return get_settings()
    finally:
        get_settings.cache_clear()


class SettingsWithoutEnvironment(Settings):
    """Settings from the values given and the defaults only: a developer's STREAMFLOW_* variables
    (a BaseSettings reads every field it is not given from the environment) don't leak in."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **other_sources):
        return (init_settings,)


def offline_settings(tmp_path: Path) -> Settings:
    """Settings under `tmp_path` whose database is unreachable: for tests that must touch none."""
    return SettingsWithoutEnvironment(
        repo_root=tmp_path,
        state_dir=tmp_path / "state",
        drops_dir=tmp_path / "drops",
        db_url_override="postgresql://127.0.0.1:1/none",
        mlflow_tracking_uri_override=None,
        embedded_pg_port=1,
        online_store_override=None,
    )


def refuse_unless_disposable(external_url: str | None, environ: dict[str, str]) -> None:
    """Tests that drop the `airflow` and `mlflow` databases run only on a server nobody else uses:
    the session's own embedded one, or an external one explicitly marked disposable."""
    if external_url and environ.get(DISPOSABLE_FLAG) != "1":
        raise pytest.UsageError(
            f"STREAMFLOW_TEST_DB_URL points at an external server and this test drops its airflow and "
            f"mlflow databases; set {DISPOSABLE_FLAG}=1 if that server is disposable"
        )


@pytest.fixture(scope="session")
def disposable_pg_server(pg_server) -> str:
    """The test server, when its airflow/mlflow databases may be dropped (see refuse_unless_disposable)."""
    refuse_unless_disposable(os.environ.get("STREAMFLOW_TEST_DB_URL"), dict(os.environ))
    return pg_server


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> str:
    """URL of a running Postgres server (its `postgres` database)."""
    external = os.environ.get("STREAMFLOW_TEST_DB_URL")
    if external:
        yield replace_database(external, "postgres")
        return
    # Not under pytest's basetemp: pytest prunes old basetemp folders, and a second pytest run on
    # the same machine would delete this server's data directory under it.
    home = Path(tempfile.mkdtemp(prefix="streamflow-test-pg-"))
    settings = Settings(
        repo_root=REPO,
        state_dir=home,
        drops_dir=home / "drops",
        db_url_override=None,
        mlflow_tracking_uri_override=None,
        embedded_pg_port=free_port(),
        online_store_override=None,
    )
    url = start_embedded(settings)
    yield replace_database(url, "postgres")
    stop_embedded(settings)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def fresh_db(pg_server) -> str:
    """URL of a new, empty database on the test server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield replace_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stack_env(monkeypatch, tmp_path, fresh_db) -> Settings:
    """Settings pointing at a fresh database and a temp state dir, as a user's env would."""
    monkeypatch.setenv("STREAMFLOW_DB_URL", fresh_db)
    monkeypatch.setenv("STREAMFLOW_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("STREAMFLOW_DROPS_DIR", str(tmp_path / "drops"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.delenv("STREAMFLOW_FEAST_ONLINE_STORE", raising=False)
    get_settings.cache_clear()
    with bentoml_home(tmp_path / "bentoml"):
        yield get_settings()
    get_settings.cache_clear()


@contextmanager
def bentoml_home(home: Path):
    """Point BentoML's stores at `home` for one test.

    BentoML reads BENTOML_HOME once per process and caches its stores; in production a process
    has one home, but a test session would otherwise keep using the first test's.
    """
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    for sub in ("models", "bentos", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    overrides = {
        BentoMLContainer.bentoml_home: str(home),
        BentoMLContainer.model_store: ModelStore(str(home / "models")),
        BentoMLContainer.bento_store: BentoStore(str(home / "bentos")),
        BentoMLContainer.tmp_bento_store_dir: str(home / "tmp"),
    }
    for provider, value in overrides.items():
        provider.set(value)
    try:
        yield
    finally:
        for provider in overrides:
            provider.reset()


def load_months(db_url: str, drops_dir: Path, months, users: int, seed: int = 42) -> None:
    """Generate the months (month_001 drifted, as by default) and load them into the warehouse."""
    from streamflow_mlops.data.warehouse import create_schema, load_drop
    from streamflow_mlops.synthetic.generate import DropSpec, default_drift, write_drop

    with psycopg.connect(db_url) as conn:
        create_schema(conn)
        for m in months:
            spec = DropSpec(m, users=users, seed=seed, drift=default_drift(m))
            folder = write_drop(spec, drops_dir)
            with conn.transaction():
                load_drop(conn, folder, spec.as_of)


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for the whole test run (its JVM takes seconds to start), the way
    the spark engine starts it (data/spark.py)."""
    pytest.importorskip("pyspark")
    from streamflow_mlops.data.spark import spark_session, stop_spark_session

    home = Path(tempfile.mkdtemp(prefix="streamflow-test-spark-"))
    settings = SettingsWithoutEnvironment(
        repo_root=REPO, state_dir=home, drops_dir=home / "drops", spark_master="local[2]", engine="spark"
    )
    yield spark_session(settings)
    stop_spark_session()
    shutil.rmtree(home, ignore_errors=True)
