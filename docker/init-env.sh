#!/usr/bin/env bash
# Writes .env from .env.example with every `change-me` secret replaced by a fresh random value,
# and AIRFLOW_UID set to the current user. Never overwrites an existing file.
#   docker/init-env.sh [PATH]   # PATH (default .env, relative to the repository) for
#                               # `docker compose --env-file PATH`, e.g. a second stack beside yours
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-.env}"

if [[ -e "$target" ]]; then
    echo "$target already exists; edit it or remove it first" >&2
    exit 1
fi

random_hex() { python3 -c "import secrets; print(secrets.token_hex(24))"; }
fernet_key() { python3 -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"; }

# Airflow's image refuses to run as root: a root shell keeps the image's own user.
airflow_uid() { if [[ "$(id -u)" == 0 ]]; then echo 50000; else id -u; fi; }

umask 077
while IFS= read -r line; do
    case "$line" in
        AIRFLOW_FERNET_KEY=change-me) echo "AIRFLOW_FERNET_KEY=$(fernet_key)" ;;
        AIRFLOW_UID=*) echo "AIRFLOW_UID=$(airflow_uid)" ;;
        *=change-me) echo "${line%%=*}=$(random_hex)" ;;
        *) echo "$line" ;;
    esac
done < .env.example > "$target"
echo "wrote $target (secrets generated; the Airflow admin password is AIRFLOW_ADMIN_PASSWORD in it)"
