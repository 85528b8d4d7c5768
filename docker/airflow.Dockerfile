# Airflow for the StreamFlow stack: the official image extended with the project's lock.
#
# requirements.txt is a full lock (it pins apache-airflow==3.3.2 itself, and every transitive
# dependency), so it is installed as-is instead of against Airflow's constraints file: `uv pip
# install` of exact pins gives the versions the tests ran, and the airflow pin matches the base
# image, so Airflow is never upgraded or downgraded by accident. Where the lock and the image's
# constraints disagree on a shared package, the lock wins; the image's extra providers that the
# project never imports are left as they are. requirements-celery.txt adds the CeleryExecutor
# (resolved against the lock, see its header).
FROM apache/airflow:3.3.2-python3.11

COPY requirements.txt docker/airflow/requirements-celery.txt /tmp/requirements/
RUN uv pip install --no-cache -r /tmp/requirements/requirements.txt -r /tmp/requirements/requirements-celery.txt

# The same files as on the host: compose mounts them over these paths read-only, an image run
# elsewhere (Kubernetes, a registry pull) uses these baked-in copies.
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 feature_repo /opt/airflow/feature_repo
COPY --chown=airflow:0 expectations /opt/airflow/expectations
COPY --chown=airflow:0 bentos /opt/airflow/bentos
COPY --chown=airflow:0 docker/airflow/airflow-init.sh /opt/airflow/airflow-init.sh

# Airflow puts plugins/ on sys.path itself; subprocesses such as the Feast CLI need it too.
# STREAMFLOW_REPO is where settings look for feature_repo/ and expectations/.
ENV PYTHONPATH=/opt/airflow/plugins \
    STREAMFLOW_REPO=/opt/airflow
