"""One settings object: read from the environment on first use, cached, one place for defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[3]

WAREHOUSE_DB = "streamflow"
AIRFLOW_DB = "airflow"
MLFLOW_DB = "mlflow"
WAREHOUSE_SCHEMA = "streamflow"
REGISTERED_MODEL = "streamflow_churn"
CHAMPION_ALIAS = "champion"
# A challenger the service also scores, off the request path, beside the champion (serving/shadow.py):
# set while a promotion waits for its reviewer (pipelines/review.py), or by hand to watch any version.
SHADOW_ALIAS = "shadow"
EXPERIMENT = "streamflow"
FEATURE_SERVICE = "churn_model_v1"
WAREHOUSE_CONN_ID = "streamflow_warehouse"
# Rows each task holds at once when it works through a month: 200,000 rows of the 14
# features are ~60 MB as a frame and a few hundred MB once encoded and explained, so a task's peak
# stays far under 3 GiB whatever the month's size; larger chunks buy little (per-chunk overhead is
# a few ms against seconds of work).
DEFAULT_CHUNK_ROWS = 200_000
# Who signs off a promotion (pipelines/review.py): `auto` (the rule alone) or `human` (a reviewer in Airflow).
APPROVAL_MODES = ("auto", "human")
# The seeded sample of a month's training rows a challenger is fitted on. Measured on a 10M-user
# month (bench/bench_train_sample.py, README "Scale"): holdout AUC 0.8739 at 100k rows, 0.8741 at
# 300k, 1M and 3M (standard error 0.0003 on the 2M holdout rows), while the fit takes 3x the time
# and memory per tripling. 300k is the smallest size indistinguishable from 3M.
DEFAULT_TRAIN_MAX_ROWS = 300_000
# Users per month in Evidently's drift report (a seeded hash sample; README "Scale": the drift
# shares and the gate's decision at 1M rows are those of the whole month within noise).
DEFAULT_DRIFT_SAMPLE_ROWS = 200_000
# Months of fees a churner takes away, for `expected_loss` = probability x monthly fee x horizon
# (issue 28). A year is the usual horizon of a retention budget and of customer-value models in
# churn targeting (Lemmens & Gupta); the horizon only scales the money figures: every horizon
# ranks users the same way, so no measured figure could pick it.
DEFAULT_VALUE_HORIZON_MONTHS = 12.0
# The sender of StreamFlow's mail notifications when STREAMFLOW_NOTIFY_FROM is unset (pipelines/notifiers.py).
DEFAULT_NOTIFY_FROM = "streamflow@localhost"


def replace_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, for logs and messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_driver(url: str, driver: str) -> str:
    """`postgresql://...` as a SQLAlchemy URL for the given driver (`psycopg`, `psycopg2`)."""
    parts = urlsplit(url)
    return urlunsplit((f"postgresql+{driver}", parts.netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Settings:
    repo_root: Path
    state_dir: Path
    drops_dir: Path
    db_url_override: str | None
    mlflow_tracking_uri_override: str | None
    embedded_pg_port: int
    online_store_override: str | None
    airflow_port: int = 8080
    mlflow_port: int = 5000
    service_port: int = 3000
    evidently_port: int = 8000
    bentoml_home_override: str | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    train_max_rows: int = DEFAULT_TRAIN_MAX_ROWS
    drift_sample_rows: int = DEFAULT_DRIFT_SAMPLE_ROWS
    value_horizon_months: float = DEFAULT_VALUE_HORIZON_MONTHS
    approval: str = "auto"
    mlflow_ui_override: str | None = None
    # Notifications (pipelines/notifiers.py), off unless a channel is configured: mail through an
    # Airflow SMTP connection (AIRFLOW_CONN_<ID>, credentials stay there) to `notify_to`, and/or a
    # JSON POST to a webhook.
    notify_smtp_conn: str | None = None
    notify_to: tuple[str, ...] = ()
    notify_from: str = DEFAULT_NOTIFY_FROM
    notify_webhook_url: str | None = None

    @property
    def embedded(self) -> bool:
        """True when no external server is configured and the embedded Postgres is used."""
        return self.db_url_override is None

    @property
    def db_url(self) -> str:
        """Warehouse URL (`postgresql://user:pw@host:port/streamflow`)."""
        if self.db_url_override:
            return self.db_url_override
        password_file = self.embedded_pg_password_file
        credentials = f"postgres:{password_file.read_text().strip()}" if password_file.exists() else "postgres"
        return f"postgresql://{credentials}@127.0.0.1:{self.embedded_pg_port}/{WAREHOUSE_DB}"

    @property
    def embedded_pg_password_file(self) -> Path:
        """The embedded server's generated `postgres` password (0600, made by platform.embedded)."""
        return self.state_dir / "secrets" / "pg_password"

    @property
    def airflow_db_url(self) -> str:
        return with_driver(replace_database(self.db_url, AIRFLOW_DB), "psycopg2")

    @property
    def mlflow_backend_url(self) -> str:
        return with_driver(replace_database(self.db_url, MLFLOW_DB), "psycopg2")

    @property
    def mlflow_tracking_uri(self) -> str:
        """The MLflow server when one runs (MLFLOW_TRACKING_URI), else its backend database directly."""
        return self.mlflow_tracking_uri_override or self.mlflow_backend_url

    @property
    def mlflow_ui_url(self) -> str:
        """Where a person opens the MLflow UI (links in approval requests): STREAMFLOW_MLFLOW_UI_URL,
        else the local server's port."""
        return (self.mlflow_ui_override or f"http://127.0.0.1:{self.mlflow_port}").rstrip("/")

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def feature_repo(self) -> Path:
        return self.repo_root / "feature_repo"

    @property
    def expectations_dir(self) -> Path:
        return self.repo_root / "expectations"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def evidently_workspace(self) -> Path:
        """The Evidently UI's workspace (monitoring/dashboard.py writes it, `evidently ui` serves it)."""
        return self.state_dir / "evidently"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def bentoml_home(self) -> Path:
        """BentoML's store: BENTOML_HOME when set (tests, a user's own store), else under the state dir."""
        return Path(self.bentoml_home_override) if self.bentoml_home_override else self.state_dir / "bentoml"

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def online_store(self) -> str:
        """Feast online store config as a YAML flow mapping, substituted into feature_store.yaml.

        The embedded default is sqlite: measured faster than Postgres for both reads and
        materialization, and it needs no extra server. Compose points this at Redis.
        """
        if self.online_store_override:
            return self.online_store_override
        return "{type: sqlite, path: " + str(self.state_dir / "online_store.db") + "}"

    def feast_env(self) -> dict[str, str]:
        """The variables feature_store.yaml reads (`${...}`), derived from the warehouse URL."""
        parts = urlsplit(self.db_url)
        return {
            "STREAMFLOW_PG_HOST": parts.hostname or "127.0.0.1",
            "STREAMFLOW_PG_PORT": str(parts.port or 5432),
            "STREAMFLOW_PG_DB": parts.path.lstrip("/") or WAREHOUSE_DB,
            "STREAMFLOW_PG_USER": parts.username or "postgres",
            "STREAMFLOW_PG_PASSWORD": parts.password or "",
            # Feast's Postgres config defaults to sslmode=require, which the embedded server refuses.
            "STREAMFLOW_PG_SSLMODE": parse_qs(parts.query).get("sslmode", ["prefer"])[0],
            "STREAMFLOW_FEAST_REGISTRY_URL": with_driver(self.db_url, "psycopg"),
            "STREAMFLOW_FEAST_ONLINE_STORE": self.online_store,
        }

    def client_env(self) -> dict[str, str]:
        """Everything a CLI (airflow, mlflow, feast, bentoml, psql) needs to use this stack."""
        env = {
            "STREAMFLOW_HOME": str(self.state_dir),
            "STREAMFLOW_DB_URL": self.db_url,
            "STREAMFLOW_DROPS_DIR": str(self.drops_dir),
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_db_url,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.repo_root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.repo_root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}": self.db_url,
            "BENTOML_HOME": str(self.bentoml_home),
            "PGHOST": urlsplit(self.db_url).hostname or "127.0.0.1",
            "PGPORT": str(urlsplit(self.db_url).port or 5432),
            "PGUSER": urlsplit(self.db_url).username or "postgres",
            "PGDATABASE": WAREHOUSE_DB,
            "PGPASSWORD": urlsplit(self.db_url).password or "",
        }
        env.update(self.feast_env())
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once; `get_settings.cache_clear()` re-reads."""
    state_dir = Path(os.environ.get("STREAMFLOW_HOME", REPO_ROOT / ".streamflow")).resolve()
    return Settings(
        repo_root=Path(os.environ.get("STREAMFLOW_REPO", REPO_ROOT)).resolve(),
        state_dir=state_dir,
        drops_dir=Path(os.environ.get("STREAMFLOW_DROPS_DIR", REPO_ROOT / "data" / "drops")).resolve(),
        db_url_override=os.environ.get("STREAMFLOW_DB_URL") or None,
        mlflow_tracking_uri_override=os.environ.get("MLFLOW_TRACKING_URI") or None,
        embedded_pg_port=int(os.environ.get("STREAMFLOW_PG_EMBEDDED_PORT", "54329")),
        online_store_override=os.environ.get("STREAMFLOW_FEAST_ONLINE_STORE") or None,
        airflow_port=int(os.environ.get("STREAMFLOW_AIRFLOW_PORT", "8080")),
        mlflow_port=int(os.environ.get("STREAMFLOW_MLFLOW_PORT", "5000")),
        service_port=int(os.environ.get("STREAMFLOW_SERVICE_PORT", "3000")),
        evidently_port=int(os.environ.get("STREAMFLOW_EVIDENTLY_PORT", "8000")),
        bentoml_home_override=os.environ.get("BENTOML_HOME") or None,
        chunk_rows=_positive_int("STREAMFLOW_CHUNK_ROWS", DEFAULT_CHUNK_ROWS),
        train_max_rows=_positive_int("STREAMFLOW_TRAIN_MAX_ROWS", DEFAULT_TRAIN_MAX_ROWS),
        drift_sample_rows=_positive_int("STREAMFLOW_DRIFT_SAMPLE_ROWS", DEFAULT_DRIFT_SAMPLE_ROWS),
        value_horizon_months=_positive_number("STREAMFLOW_VALUE_HORIZON_MONTHS", DEFAULT_VALUE_HORIZON_MONTHS),
        approval=_choice("STREAMFLOW_APPROVAL", APPROVAL_MODES, "auto"),
        mlflow_ui_override=os.environ.get("STREAMFLOW_MLFLOW_UI_URL") or None,
        notify_smtp_conn=os.environ.get("STREAMFLOW_NOTIFY_SMTP_CONN") or None,
        notify_to=_recipients("STREAMFLOW_NOTIFY_TO", os.environ.get("STREAMFLOW_NOTIFY_SMTP_CONN")),
        notify_from=os.environ.get("STREAMFLOW_NOTIFY_FROM") or DEFAULT_NOTIFY_FROM,
        notify_webhook_url=os.environ.get("STREAMFLOW_NOTIFY_WEBHOOK_URL") or None,
    )


def _recipients(name: str, smtp_conn: str | None) -> tuple[str, ...]:
    """Comma-separated addresses; a mail channel without any is half a configuration, refused."""
    addresses = tuple(a.strip() for a in (os.environ.get(name) or "").split(",") if a.strip())
    if smtp_conn and not addresses:
        raise ValueError(f"STREAMFLOW_NOTIFY_SMTP_CONN={smtp_conn!r} needs {name} (comma-separated recipients)")
    return addresses


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = (os.environ.get(name) or default).strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _positive_int(name: str, default: int) -> int:
    text = os.environ.get(name) or str(default)
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r}: expected a positive whole number of rows")
    return value


def _positive_number(name: str, default: float) -> float:
    text = os.environ.get(name) or str(default)
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value < float("inf"):
        raise ValueError(f"{name}={text!r}: expected a positive number")
    return value
