# Airflow for the StreamFlow stack: the official image extended with the project's lock and library.
#
# requirements.txt is a full lock (it pins apache-airflow==3.3.2 itself, and every transitive
# dependency), so it is installed as-is instead of against Airflow's constraints file: `uv pip
# install` of exact pins gives the versions the tests ran, and the airflow pin matches the base
# image, so Airflow is never upgraded or downgraded by accident. Where the lock and the image's
# constraints disagree on a shared package, the lock wins; the image's extra providers that the
# project never imports are left as they are. requirements-celery.txt adds the CeleryExecutor
# (resolved against the lock, see its header).
#
# The Spark engine's packages (docker/without-spark.txt, ~500 MB) and a JRE (~215 MB) are only in
# the image built with STREAMFLOW_ENGINE=spark (compose passes its own STREAMFLOW_ENGINE and tags
# the image by it): with that engine every task is a Spark driver in client mode. The default
# (postgres) image stays as it was, and both share every layer up to the engine's.
FROM apache/airflow:3.3.2-python3.11

COPY requirements.txt docker/airflow/requirements-celery.txt docker/without-spark.txt /tmp/requirements/
RUN uv pip install --no-cache -r /tmp/requirements/requirements.txt -r /tmp/requirements/requirements-celery.txt \
    --excludes /tmp/requirements/without-spark.txt

# Declared here, not above: a different value leaves the layers above cached.
ARG STREAMFLOW_ENGINE=postgres
USER root
# Debian's Java 17 (pyspark 4 runs on 17 or 21); the JRE's postinst links man pages into
# /usr/share/man/man1, which slim images may lack.
RUN if [ "$STREAMFLOW_ENGINE" = spark ]; then \
        mkdir -p /usr/share/man/man1 \
        && apt-get update \
        && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
        && rm -rf /var/lib/apt/lists/*; \
    fi
USER airflow
# What the install above left out (pyspark, py4j), at the lock's versions.
RUN if [ "$STREAMFLOW_ENGINE" = spark ]; then \
        uv pip install --no-cache -c /tmp/requirements/requirements.txt -r /tmp/requirements/without-spark.txt; \
    fi

# The library, installed like any distribution (its dependencies are the lock above): DAG tasks,
# the Feast CLI and `python -m streamflow_mlops` import it from site-packages, not from a path.
COPY --chown=airflow:0 pyproject.toml README.md /tmp/streamflow-src/
COPY --chown=airflow:0 plugins /tmp/streamflow-src/plugins
RUN uv pip install --no-cache --no-deps /tmp/streamflow-src && rm -rf /tmp/streamflow-src

# The repository files the tasks read at run time (STREAMFLOW_REPO): the DAGs, the feature repo,
# the suites, and what `python -m streamflow_mlops bento` builds from (the bentofile, the service,
# the library sources it bundles and the lock it takes the pins from). Compose mounts the DAGs,
# the feature repo and the suites over these read-only; an image run elsewhere (Kubernetes) uses
# these copies.
COPY --chown=airflow:0 requirements.txt pyproject.toml README.md /opt/airflow/
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 feature_repo /opt/airflow/feature_repo
COPY --chown=airflow:0 expectations /opt/airflow/expectations
COPY --chown=airflow:0 bentos /opt/airflow/bentos
COPY --chown=airflow:0 docker/airflow/airflow-init.sh /opt/airflow/airflow-init.sh

# STREAMFLOW_REPO is where settings look for feature_repo/, expectations/ and the bento sources.
ENV STREAMFLOW_REPO=/opt/airflow
