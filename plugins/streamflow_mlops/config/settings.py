"""One settings object: read from the environment on first use, cached, one place for defaults."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import Field, PositiveFloat, PositiveInt, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
Approval = Literal["auto", "human"]
APPROVAL_MODES = get_args(Approval)
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
# The demo's background processes run at this nice increment (why: the `demo_nice` field below).
DEFAULT_DEMO_NICE = 10
# Where a month's heavy work runs (docs/spark.md): `postgres` (one Postgres and the task's own
# process, the default) or `spark` (Parquet tables under the lake, Spark jobs on STREAMFLOW_SPARK_MASTER).
Engine = Literal["postgres", "spark"]
ENGINES = get_args(Engine)
DEFAULT_SPARK_MASTER = "local[*]"


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


class Settings(BaseSettings):
    """Each field names the variable that sets it; an empty variable means the default. Fields that
    may carry credentials (URLs, connection strings) are left out of `repr`, and so out of logs."""

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        env_ignore_empty=True,
        validate_by_name=True,
        # A refused value must not print the others (the database URL carries its password).
        hide_input_in_errors=True,
    )

    repo_root: Path = Field(REPO_ROOT, validation_alias="STREAMFLOW_REPO")
    state_dir: Path = Field(REPO_ROOT / ".streamflow", validation_alias="STREAMFLOW_HOME")
    drops_dir: Path = Field(REPO_ROOT / "data" / "drops", validation_alias="STREAMFLOW_DROPS_DIR")
    db_url_override: str | None = Field(None, validation_alias="STREAMFLOW_DB_URL", repr=False)
    mlflow_tracking_uri_override: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI", repr=False)
    embedded_pg_port: int = Field(54329, validation_alias="STREAMFLOW_PG_EMBEDDED_PORT")
    online_store_override: str | None = Field(None, validation_alias="STREAMFLOW_FEAST_ONLINE_STORE", repr=False)
    airflow_port: int = Field(8080, validation_alias="STREAMFLOW_AIRFLOW_PORT")
    mlflow_port: int = Field(5000, validation_alias="STREAMFLOW_MLFLOW_PORT")
    service_port: int = Field(3000, validation_alias="STREAMFLOW_SERVICE_PORT")
    evidently_port: int = Field(8000, validation_alias="STREAMFLOW_EVIDENTLY_PORT")
    bentoml_home_override: str | None = Field(None, validation_alias="BENTOML_HOME")
    chunk_rows: PositiveInt = Field(DEFAULT_CHUNK_ROWS, validation_alias="STREAMFLOW_CHUNK_ROWS")
    train_max_rows: PositiveInt = Field(DEFAULT_TRAIN_MAX_ROWS, validation_alias="STREAMFLOW_TRAIN_MAX_ROWS")
    drift_sample_rows: PositiveInt = Field(DEFAULT_DRIFT_SAMPLE_ROWS, validation_alias="STREAMFLOW_DRIFT_SAMPLE_ROWS")
    value_horizon_months: float = Field(
        DEFAULT_VALUE_HORIZON_MONTHS, gt=0, allow_inf_nan=False, validation_alias="STREAMFLOW_VALUE_HORIZON_MONTHS"
    )
    approval: Approval = Field("auto", validation_alias="STREAMFLOW_APPROVAL")
    mlflow_ui_override: str | None = Field(None, validation_alias="STREAMFLOW_MLFLOW_UI_URL")
    # Notifications (pipelines/notifiers.py), off unless a channel is configured: mail through an
    # Airflow SMTP connection (AIRFLOW_CONN_<ID>, credentials stay there) to `notify_to`, and/or a
    # JSON POST to a webhook.
    notify_smtp_conn: str | None = Field(None, validation_alias="STREAMFLOW_NOTIFY_SMTP_CONN")
    notify_to: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias="STREAMFLOW_NOTIFY_TO")
    notify_from: str = Field(DEFAULT_NOTIFY_FROM, validation_alias="STREAMFLOW_NOTIFY_FROM")
    notify_webhook_url: str | None = Field(None, validation_alias="STREAMFLOW_NOTIFY_WEBHOOK_URL", repr=False)
    # The churn service (bentos/churn_service/service.py, serving/runtime.py).
    service_host: str = Field("127.0.0.1", validation_alias="STREAMFLOW_SERVICE_HOST")
    # Unset: one per core, up to 4 (serving/runtime.py worker_count says why).
    service_workers: PositiveInt | None = Field(None, validation_alias="STREAMFLOW_SERVICE_WORKERS")
    # Unset: the champion watcher's own interval (serving/champion.py).
    champion_poll_s: PositiveFloat | None = Field(None, validation_alias="STREAMFLOW_CHAMPION_POLL_S")
    # A log line per request costs more than the prediction itself at a few hundred req/s; requests
    # are counted in /metrics and every prediction is in prediction_log.
    service_access_log: bool = Field(False, validation_alias="STREAMFLOW_SERVICE_ACCESS_LOG")
    # OpenTelemetry's middleware builds a span per request even with no exporter configured, about a
    # fifth of a request's CPU here; on, it traces the API routes again.
    service_tracing: bool = Field(False, validation_alias="STREAMFLOW_SERVICE_TRACING")
    # BentoML's request timeout with its timer cancelled per request (extensions/bentoml.py); off runs BentoML's own.
    service_cancel_request_timers: bool = Field(True, validation_alias="STREAMFLOW_SERVICE_CANCEL_REQUEST_TIMERS")
    # The CPU priority (nice, 0..19) of everything the demo starts but the churn service: Airflow (and
    # the tasks it runs), MLflow and the Evidently UI. On a laptop they share the cores with serving;
    # their bursts (a DAG parse, a scheduler loop) otherwise preempted the service's workers and set
    # its p99 (bench/bench_serving.py). Idle serving leaves them the whole machine. 0 keeps them equal.
    demo_nice: int = Field(DEFAULT_DEMO_NICE, validation_alias="STREAMFLOW_DEMO_NICE")
    # The data plane (docs/spark.md). The control tables, MLflow, Airflow and Feast's registry stay
    # in Postgres with either engine.
    engine: Engine = Field("postgres", validation_alias="STREAMFLOW_ENGINE")
    spark_master: str = Field(DEFAULT_SPARK_MASTER, validation_alias="STREAMFLOW_SPARK_MASTER")
    # Where the spark engine's tables live: a local path (the default, under the state dir) or a
    # Hadoop URL every executor can reach (`s3a://bucket/streamflow`, `hdfs://...`).
    lake_url_override: str | None = Field(None, validation_alias="STREAMFLOW_LAKE_URL")
    # Extra Spark properties, `key=value` separated by commas or newlines (`spark.executor.memory=8g`).
    spark_conf: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias="STREAMFLOW_SPARK_CONF", repr=False)

    @field_validator("repo_root", "state_dir", "drops_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.resolve()

    @field_validator("approval", "engine", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("notify_to", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return tuple(a.strip() for a in value.split(",") if a.strip()) if isinstance(value, str) else value

    @field_validator("spark_conf", mode="before")
    @classmethod
    def _spark_properties(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        # A value may hold commas (spark.jars.packages=a,b): a pair ends only where the next spark. key starts.
        pairs = tuple(p.strip() for p in re.split(r"\n|,(?=\s*spark\.)", value) if p.strip())
        malformed = [p for p in pairs if "=" not in p or not p.split("=", 1)[0].strip().startswith("spark.")]
        if malformed:
            raise ValueError(f"STREAMFLOW_SPARK_CONF takes spark.<name>=<value> pairs; not: {malformed}")
        return pairs

    @field_validator("demo_nice", mode="before")
    @classmethod
    def _nice_in_range(cls, value: object) -> int:
        """Lenient: out of range is clamped, not a number is the default (a priority is no reason to fail)."""
        try:
            return min(19, max(0, int(value)))
        except (TypeError, ValueError):
            return DEFAULT_DEMO_NICE

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
    def feature_store_yaml(self) -> Path:
        """The Feast repo's config for the engine: `feature_store.yaml`, or `feature_store.spark.yaml`."""
        name = "feature_store.spark.yaml" if self.engine == "spark" else "feature_store.yaml"
        return self.feature_repo / name

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
    def lake_url(self) -> str:
        """The spark engine's lake: STREAMFLOW_LAKE_URL, else `<state dir>/lake`."""
        return (self.lake_url_override or str(self.state_dir / "lake")).rstrip("/")

    @property
    def spark_properties(self) -> dict[str, str]:
        """STREAMFLOW_SPARK_CONF as a mapping."""
        return dict((k.strip(), v.strip()) for k, v in (p.split("=", 1) for p in self.spark_conf))

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
            "STREAMFLOW_LAKE_URL": self.lake_url,
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
        if self.engine == "spark":
            env |= {
                "STREAMFLOW_ENGINE": self.engine,
                "STREAMFLOW_SPARK_MASTER": self.spark_master,
                "FEAST_FS_YAML_FILE_PATH": str(self.feature_store_yaml),
            }
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once; `get_settings.cache_clear()` re-reads."""
    return Settings()
