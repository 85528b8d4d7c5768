"""The engine setting (STREAMFLOW_ENGINE) and what the postgres engine must never load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamflow_mlops.data.spark import UTC_JAVA_OPTION, session_properties
from tests.conftest import settings_from

REPO = Path(__file__).resolve().parents[2]


def test_the_engine_defaults_to_postgres_and_the_lake_to_the_state_dir(monkeypatch, tmp_path):
    for name in ("STREAMFLOW_ENGINE", "STREAMFLOW_SPARK_MASTER", "STREAMFLOW_LAKE_URL", "STREAMFLOW_SPARK_CONF"):
        monkeypatch.delenv(name, raising=False)
    settings = settings_from({"STREAMFLOW_HOME": str(tmp_path)}, monkeypatch)
    assert settings.engine == "postgres"
    assert settings.spark_master == "local[*]"
    assert settings.lake_url == str(tmp_path / "lake")
    assert settings.spark_properties == {}


def test_spark_settings_are_read_from_the_environment(monkeypatch):
    settings = settings_from(
        {
            "STREAMFLOW_ENGINE": " Spark ",
            "STREAMFLOW_SPARK_MASTER": "spark://spark-master:7077",
            "STREAMFLOW_LAKE_URL": "s3a://bucket/streamflow/",
            "STREAMFLOW_SPARK_CONF": "spark.executor.memory=8g, spark.hadoop.fs.s3a.endpoint=http://minio:9000,"
            "spark.jars.packages=org.a:b:1,org.c:d:2\nspark.sql.session.timeZone=Europe/Paris",
        },
        monkeypatch,
    )
    assert settings.engine == "spark"
    assert settings.lake_url == "s3a://bucket/streamflow"
    assert settings.spark_properties == {
        "spark.executor.memory": "8g",
        "spark.hadoop.fs.s3a.endpoint": "http://minio:9000",
        "spark.jars.packages": "org.a:b:1,org.c:d:2",  # a value's own commas stay in it
        "spark.sql.session.timeZone": "Europe/Paris",
    }
    # The session runs in UTC whatever is asked: the point-in-time joins assume it.
    assert session_properties(settings)["spark.sql.session.timeZone"] == "UTC"
    # Spark properties may carry object-store keys: never in a settings repr (and so in a log).
    assert "minio" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"), [("STREAMFLOW_ENGINE", "duckdb"), ("STREAMFLOW_SPARK_CONF", "executor.memory=8g")]
)
def test_a_wrong_engine_setting_is_refused(monkeypatch, name, value):
    with pytest.raises(ValidationError, match=name):
        settings_from({name: value}, monkeypatch)


def test_a_local_session_listens_on_loopback_only_and_runs_in_utc(monkeypatch, tmp_path):
    settings = settings_from({"STREAMFLOW_HOME": str(tmp_path), "STREAMFLOW_SPARK_MASTER": "local[2]"}, monkeypatch)
    properties = session_properties(settings)
    assert properties["spark.driver.bindAddress"] == properties["spark.driver.host"] == "127.0.0.1"
    assert properties["spark.ui.enabled"] == "false"
    assert properties["spark.sql.session.timeZone"] == "UTC"
    assert UTC_JAVA_OPTION in properties["spark.driver.extraJavaOptions"]


def test_a_cluster_session_keeps_utc_under_the_users_java_options(monkeypatch):
    settings = settings_from(
        {
            "STREAMFLOW_SPARK_MASTER": "spark://spark-master:7077",
            "STREAMFLOW_SPARK_CONF": "spark.executor.extraJavaOptions=-Xss4m,spark.sql.shuffle.partitions=64",
        },
        monkeypatch,
    )
    properties = session_properties(settings)
    assert "spark.driver.bindAddress" not in properties
    assert properties["spark.ui.enabled"] == "false"  # the driver's UI would listen on every interface
    assert properties["spark.executor.extraJavaOptions"] == f"-Xss4m {UTC_JAVA_OPTION}"
    assert properties["spark.sql.shuffle.partitions"] == "64"


# The Feast plugin that subclasses Feast's Spark offline store: loaded by Feast only when
# feature_store.spark.yaml names it.
SPARK_ONLY = ("streamflow_mlops.extensions.feast.spark_offline_store",)


@pytest.mark.slow
def test_the_postgres_engine_never_imports_pyspark():
    """Every library module (but the Spark-only plugin Feast loads by name) and every DAG file
    import without pyspark: the default path (make demo, the images without it) loads no Spark."""
    code = (
        "import importlib, pathlib, sys\n"
        "root = pathlib.Path('plugins/streamflow_mlops')\n"
        "for path in sorted(root.rglob('*.py')):\n"
        "    name = '.'.join(path.relative_to('plugins').with_suffix('').parts).removesuffix('.__init__')\n"
        f"    if name not in {SPARK_ONLY!r}:\n"
        "        importlib.import_module(name)\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder='dags')\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_month_is_swapped_in_where_the_filesystem_refuses_an_exchange(tmp_path, monkeypatch):
    """NFS answers RENAME_EXCHANGE with EINVAL: the old month moves aside, the new one in."""
    import errno

    from streamflow_mlops.data import lake

    target, staged = tmp_path / "users" / "as_of=2024-01-31", tmp_path / "users" / "_staging" / "new"
    for folder, text in ((target, "old"), (staged, "new")):
        folder.mkdir(parents=True)
        (folder / "part-0.parquet").write_text(text)

    def refuse(a, b):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(lake, "_exchange", refuse)
    lake.swap_in_local(staged, target)
    assert (target / "part-0.parquet").read_text() == "new"
    assert not staged.exists() and list((tmp_path / "users" / "_staging").iterdir()) == []
