"""What every benchmark shares: the machine line and a Postgres to measure against."""

from __future__ import annotations

import os
import platform
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg

from streamflow_mlops.config.settings import REPO_ROOT, Settings, replace_database
from streamflow_mlops.platform.embedded import start_embedded, stop_embedded


def machine() -> str:
    """Cores, CPU model, Python and the load average: benchmark figures mean little without them."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = ", load avg {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}{load}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_process():
    """The running `make demo` process (psutil), or None: its processes share the cores with a benchmark."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "streamflow_mlops" in cmd and cmd.rstrip().endswith(" demo"):
            return proc
    return None


@contextmanager
def postgres_server(workdir: Path):
    """URL of a server's `postgres` database: `STREAMFLOW_BENCH_DB_URL`'s, or an embedded one for the run."""
    external = os.environ.get("STREAMFLOW_BENCH_DB_URL")
    if external:
        yield replace_database(external, "postgres")
        return
    port = free_port()
    settings = Settings(
        repo_root=REPO_ROOT,
        state_dir=workdir / "pg",
        drops_dir=workdir,
        db_url_override=None,
        mlflow_tracking_uri_override=None,
        embedded_pg_port=port,
        online_store_override=None,
    )
    url = start_embedded(settings)
    try:
        yield replace_database(url, "postgres")
    finally:
        stop_embedded(settings)


@contextmanager
def scratch_database(server: str):
    """A new database on the server for one measurement, dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield replace_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
