"""The Spark session of the spark engine (STREAMFLOW_ENGINE=spark, docs/spark.md).

pyspark is imported inside these functions only: the postgres engine (the default, `make demo`)
never loads it (tests/unit/test_engines.py checks). One session per process, started on first use
against STREAMFLOW_SPARK_MASTER (`local[*]`, `spark://host:7077`, `k8s://...`) in client mode: the
task is the driver, the executors read and write the lake (STREAMFLOW_LAKE_URL).

Time is UTC everywhere. Feast's Spark offline store compares event timestamps as the session sees
them and the lake's `as_of` are midnight UTC; a session in another zone would shift every
point-in-time join by its offset, so the session, the driver's and executors' JVMs and the Arrow
conversions all run in UTC whatever the machine's zone.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

from streamflow_mlops.config.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

APP_NAME = "streamflow"
UTC_JAVA_OPTION = "-Duser.timezone=UTC"
_lock = threading.Lock()
_session: SparkSession | None = None


def is_local(master: str) -> bool:
    return master.startswith("local")


def session_properties(settings: Settings) -> dict[str, str]:
    """The session's Spark properties (pure): the project's defaults, then STREAMFLOW_SPARK_CONF.

    Local mode binds the driver to 127.0.0.1 and runs no web UI (nothing listens beyond the
    machine unless configured); a cluster's driver must be reachable by its executors, so its
    address is left to Spark (or `spark.driver.host` in STREAMFLOW_SPARK_CONF)."""
    local = is_local(settings.spark_master)
    properties = {
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": UTC_JAVA_OPTION,
        "spark.executor.extraJavaOptions": UTC_JAVA_OPTION,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # A month is a few hundred MB of Parquet: Spark's default of 200 shuffle partitions makes
        # 200 tiny tasks per join on a laptop; adaptive execution coalesces them on a cluster.
        "spark.sql.shuffle.partitions": "8" if local else "200",
        "spark.sql.adaptive.enabled": "true",
        # Overwrite only the partitions a write holds (a month), never the whole table.
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.ui.showConsoleProgress": "false",
        # The driver's UI (and its kill links) would listen on every interface of the task's host.
        "spark.ui.enabled": "false",
    }
    if local:
        properties |= {
            # Shuffle and spill files under the state dir (a cluster's workers have their own).
            "spark.local.dir": str(settings.state_dir / "spark-tmp"),
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.memory": "2g",
        }
    properties |= settings.spark_properties
    # Feast's point-in-time joins and the lake's as_of casts assume UTC: not overridable.
    properties["spark.sql.session.timeZone"] = "UTC"
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        if UTC_JAVA_OPTION not in properties[key]:
            properties[key] = f"{properties[key]} {UTC_JAVA_OPTION}".strip()
    return properties


def spark_session(settings: Settings | None = None) -> SparkSession:
    """The process's Spark session, started on first use (a few seconds: the JVM)."""
    from pyspark.sql import SparkSession

    global _session
    settings = settings or get_settings()
    with _lock:
        if _session is not None:
            return _session
        if is_local(settings.spark_master):
            # The driver's block manager and RPC listen on this address; local mode keeps them on loopback.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            # The Python workers (materialization, scoring) run this process's interpreter and
            # packages, not whatever `python3` is first on the PATH. A cluster's workers run their
            # own (PYSPARK_PYTHON of the driver names it, docs/spark.md).
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        (settings.state_dir / "spark-tmp").mkdir(parents=True, exist_ok=True)
        builder = SparkSession.builder.master(settings.spark_master).appName(APP_NAME)
        for key, value in session_properties(settings).items():
            builder = builder.config(key, value)
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("WARN")
        log.info("Spark %s session on %s", _session.version, settings.spark_master)
        return _session


def stop_spark_session() -> None:
    """Stop the process's session, if one runs (tests, the end of a CLI run)."""
    global _session
    with _lock:
        if _session is not None:
            _session.stop()
            _session = None
