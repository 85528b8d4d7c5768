#!/usr/bin/env bash
# One-shot setup that every long-running container waits for (`service_completed_successfully`):
# refuse missing or placeholder secrets, migrate Airflow's database, write the admin password for
# Airflow's SimpleAuthManager, and hand the shared volumes to the Airflow user.
# Runs as root (compose `user: "0:0"`) because named volumes start out owned by root.
set -euo pipefail

placeholder="change-me"
for name in AIRFLOW_ADMIN_PASSWORD STREAMFLOW_PG_PASSWORD \
            AIRFLOW__CORE__FERNET_KEY AIRFLOW__API__SECRET_KEY AIRFLOW__API_AUTH__JWT_SECRET; do
    value="${!name:-}"
    if [[ -z "$value" || "$value" == "$placeholder"* ]]; then
        echo "airflow-init: $name is empty or still the .env.example placeholder." >&2
        echo "airflow-init: run docker/init-env.sh to write a .env with fresh secrets, or edit .env." >&2
        exit 1
    fi
done

airflow db migrate

passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
mkdir -p "$(dirname "$passwords_file")"
# JSON written by Python so that any character in the password survives; rewritten on every
# start so that changing AIRFLOW_ADMIN_PASSWORD in .env and re-running `up` takes effect.
python - "$passwords_file" <<'PY'
import json
import os
import sys

path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as file:
    json.dump({os.environ.get("AIRFLOW_ADMIN_USERNAME", "admin"): os.environ["AIRFLOW_ADMIN_PASSWORD"]}, file)
PY

owner="${AIRFLOW_UID:-50000}:0"
directories=("$STREAMFLOW_HOME" "$BENTOML_HOME" "$STREAMFLOW_DROPS_DIR"
             "${AIRFLOW__LOGGING__BASE_LOG_FOLDER:-/opt/airflow/logs}" "$(dirname "$passwords_file")")
# The spark engine's lake when it is a path (the shared volume), not a URL (s3a://...).
if [[ "${STREAMFLOW_LAKE_URL:-}" == /* ]]; then
    directories+=("$STREAMFLOW_LAKE_URL")
fi
for directory in "${directories[@]}"; do
    mkdir -p "$directory"
    chown -R "$owner" "$directory"
done
echo "airflow-init: database migrated, admin user '${AIRFLOW_ADMIN_USERNAME:-admin}' ready, volumes owned by $owner"
