# Spark standalone master and workers for `docker compose --profile spark` (README, "Spark engine
# in compose"): Debian's JRE, the project's whole lock with the locked pyspark, and the library.
#
# The executors run the project's own code (scoring with mapInPandas unpickles functions that use
# pandas, scikit-learn, pyarrow, Feast, redis and streamflow_mlops), so a worker carries the same
# Python 3.11 environment as the Airflow tasks that drive it: the lock, installed as-is, and the
# library as a wheel. Spark itself is the pip-installed pyspark (its jars and `spark-class`), the
# same build the drivers use, so driver and executors never disagree on a Spark version.
FROM python:3.11-slim-bookworm

# These first steps are churn-service.Dockerfile's, word for word: the two images share the
# layers (build cache and disk) of the lock without pyspark, and this one adds Spark on top.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY requirements.txt docker/without-spark.txt /tmp/
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv venv /opt/venv \
    && uv pip install --no-cache -r /tmp/requirements.txt --excludes /tmp/without-spark.txt \
    && useradd --uid 50000 --gid 0 --create-home --home-dir /home/streamflow streamflow \
    && mkdir -p /opt/streamflow/state \
    && chown -R streamflow:0 /opt/streamflow \
    && chmod -R g+rwX /opt/streamflow /home/streamflow

# Debian's Java 17 (pyspark 4 runs on 17 or 21). The JRE's postinst links man pages into
# /usr/share/man/man1, which slim images may lack.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
# What the lines above left out (pyspark, py4j), at the lock's versions.
RUN uv pip install --no-cache -c /tmp/requirements.txt -r /tmp/without-spark.txt

# The library, installed like any distribution (its dependencies are the lock above).
COPY pyproject.toml README.md /tmp/streamflow-src/
COPY plugins /tmp/streamflow-src/plugins
RUN uv pip install --no-cache --no-deps /tmp/streamflow-src && rm -rf /tmp/streamflow-src

# SPARK_HOME is the pyspark package. A worker keeps each application's executor logs under
# SPARK_WORKER_DIR/<app id>/<executor id>/ and its shuffle files under SPARK_LOCAL_DIRS. The group
# (0) may write what the user may: compose runs these containers as AIRFLOW_UID:0, the uid the
# Airflow tasks (the drivers) write the same lake with.
ENV SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    SPARK_WORKER_DIR=/opt/spark/work \
    SPARK_LOCAL_DIRS=/opt/spark/local \
    SPARK_NO_DAEMONIZE=1 \
    PYSPARK_PYTHON=/opt/venv/bin/python
COPY docker/spark/entrypoint.sh /opt/spark/entrypoint.sh
RUN test -x "$SPARK_HOME/bin/spark-class" && java -version \
    && mkdir -p "$SPARK_WORKER_DIR" "$SPARK_LOCAL_DIRS" \
    && chown -R streamflow:0 /opt/spark \
    && chmod -R g+rwX /opt/spark \
    && chmod g+w /etc/passwd

WORKDIR /opt/spark
USER streamflow
# 8080: the master's web UI and JSON (/json/), 7077: the master's RPC; 8081: a worker's UI.
EXPOSE 7077 8080 8081
ENTRYPOINT ["/opt/spark/entrypoint.sh"]
CMD ["master"]
