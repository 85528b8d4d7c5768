# The churn service: serves bentos/churn_service (the same service.py that `make bento` builds)
# with `bentoml serve`. Installs the whole lock so the service runs exactly the versions the tests
# ran; `make bento && bentoml containerize churn_service:<version>` is the slimmer image built
# from the bentofile instead (README, "Run it with Docker"). The service never runs Spark: the Spark
# engine's packages (docker/without-spark.txt, ~480 MB) are left out.
FROM python:3.11-slim-bookworm

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

# The library, installed like any distribution (its dependencies are the lock above).
COPY pyproject.toml README.md /tmp/streamflow-src/
COPY plugins /tmp/streamflow-src/plugins
RUN uv pip install --no-cache --no-deps /tmp/streamflow-src && rm -rf /tmp/streamflow-src

COPY --chown=streamflow:0 feature_repo /app/feature_repo
COPY --chown=streamflow:0 bentos/churn_service /app/bentos/churn_service

# The service's own config (service.py) reads its bind address and port from these.
ENV STREAMFLOW_REPO=/app \
    STREAMFLOW_SERVICE_HOST=0.0.0.0 \
    STREAMFLOW_SERVICE_PORT=3000
WORKDIR /app/bentos/churn_service
USER streamflow
EXPOSE 3000
CMD ["bentoml", "serve", "service:ChurnService"]
