#!/usr/bin/env bash
# Creates the warehouse, Airflow and MLflow databases on one server, owned by the application role.
# The postgres image runs this once, on an empty data volume (/docker-entrypoint-initdb.d); it is
# idempotent so it can also be run by hand against a managed server (PGHOST/PGPORT set).
# One role for the three databases keeps the single-machine stack to one password; a managed
# Postgres should give Airflow and MLflow their own roles (their URLs are overridable).
set -euo pipefail

for database in ${STREAMFLOW_DATABASES:-streamflow airflow mlflow}; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
SELECT format('CREATE DATABASE %I OWNER %I', '$database', '$POSTGRES_USER')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database')\gexec
SQL
done
