# MLflow tracking server with the same pinned mlflow as the rest of the project.
# requirements.txt is used as a constraints file: only mlflow, the Postgres driver and their
# dependencies are installed, each at the lock's version, which keeps this image small.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv pip install --system --no-cache -c /tmp/requirements.txt mlflow psycopg2-binary \
    && useradd --uid 50000 --gid 0 --create-home mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:0 /mlartifacts

# A new named volume mounted on /mlartifacts starts with this directory's owner.
USER mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
