"""`make demo`: the whole lifecycle through real Airflow, MLflow and BentoML processes.

Starts (or reuses) the embedded Postgres, runs Airflow's api-server, scheduler, dag-processor
and triggerer, an MLflow tracking server and the churn service as child processes under
`.streamflow/`, triggers the two monthly ingests and lets the Asset chain do the rest.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg

from streamflow_mlops.config.settings import Settings, redact_url
from streamflow_mlops.pipelines.campaigns import campaign_lines
from streamflow_mlops.platform.embedded import stop_embedded, up, write_env_file
from streamflow_mlops.platform.lifecycle import (
    AIRFLOW_USER,
    LIFECYCLE_DAGS,
    POLL_S,
    SCORE_DAG,
    AirflowAPI,
    say,
    wait_for_chain,
    wait_for_scores,
)
from streamflow_mlops.platform.private_files import private_secret, write_private
from streamflow_mlops.platform.processes import Processes, http_ok, wait_for

DEMO_MONTHS = ("month_000", "month_001")


def airflow_settings(settings: Settings) -> dict[str, str]:
    """Airflow configuration for the embedded stack; secrets are generated once and kept."""
    home = settings.airflow_home
    password = private_secret(home / "admin_password", lambda: secrets.token_urlsafe(12))
    passwords_file = write_private(home / "passwords.json", json.dumps({AIRFLOW_USER: password}))
    return {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{settings.airflow_port}/execution/",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": private_secret(home / "jwt_secret", lambda: secrets.token_urlsafe(32)),
        "AIRFLOW__CORE__FERNET_KEY": private_secret(home / "fernet_key", _fernet_key),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # An unchanged DAG file is re-parsed every 10 minutes, not every 30 s: the parses took a core
        # from serving in bursts (README "Serving speed"). A changed file is still parsed at once.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def loaded_months(settings: Settings) -> set[str]:
    """The months loaded successfully so far (none in a fresh warehouse, which has no `ingestion_runs` yet)."""
    with psycopg.connect(settings.db_url) as conn:
        if conn.execute("SELECT to_regclass('streamflow.ingestion_runs')").fetchone()[0] is None:
            return set()
        query = "SELECT DISTINCT month FROM streamflow.ingestion_runs WHERE status = 'success'"
        return {month for (month,) in conn.execute(query)}


def lifecycle_done(settings: Settings) -> bool:
    """Both demo months ingested and a champion exists: a second run only starts the services."""
    try:
        months = loaded_months(settings)
        with psycopg.connect(settings.db_url) as conn:
            trained = conn.execute("SELECT count(*) FROM streamflow.drift_reports").fetchone()[0]
    except psycopg.Error:
        return False
    return set(DEMO_MONTHS) <= months and trained >= 2 and _champion_version(settings) is not None


def _champion_version(settings: Settings) -> str | None:
    from mlflow.exceptions import MlflowException

    from streamflow_mlops.serving.champion import champion_version_from_mlflow

    try:
        return champion_version_from_mlflow(settings.mlflow_tracking_uri)
    except MlflowException:
        return None


def lifecycle_summary(settings: Settings) -> list[str]:
    """Row counts, validation results, drift and model decisions, read back from the real stores."""
    from mlflow import MlflowClient

    from streamflow_mlops.config.settings import REGISTERED_MODEL

    lines = []
    with psycopg.connect(settings.db_url) as conn:
        for month, status, counts, failed in conn.execute(
            "SELECT DISTINCT ON (month) month, status, row_counts, failed_expectations "
            "FROM streamflow.ingestion_runs ORDER BY month, run_id DESC"
        ):
            detail = f"{counts.get('users', '?')} users" if status == "success" else f"{len(failed)} failed checks"
            lines.append(f"ingest {month}: {status} ({detail})")
        for (table,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'streamflow' "
            "AND table_name LIKE '%%_snapshots' ORDER BY 1"
        ):
            n = conn.execute(f"SELECT count(*) FROM streamflow.{table}").fetchone()[0]
            lines.append(f"{table}: {n} rows")
        for month, ref, share, decision, reason in conn.execute(
            "SELECT month, reference_month, drift_share, decision, reason FROM streamflow.drift_reports ORDER BY id"
        ):
            share_text = "n/a" if share is None else f"{share:.2f}"
            lines.append(f"drift {month} vs {ref or '-'}: share {share_text} -> {decision} ({reason})")
        for month, users, version, top in conn.execute(
            "SELECT month, count(*), max(model_version), max(churn_probability) FROM streamflow.churn_scores "
            "GROUP BY month ORDER BY month"
        ):
            lines.append(f"scores {month}: {users} users by model v{version}, riskiest {top:.3f}")
    lines.extend(realized_lines(settings))
    lines.extend(campaign_lines(settings.db_url))
    client = MlflowClient(settings.mlflow_tracking_uri)
    # search_model_versions leaves `aliases` empty; ask for the alias itself.
    champion = _champion_version(settings)
    for mv in sorted(client.search_model_versions(f"name='{REGISTERED_MODEL}'"), key=lambda v: int(v.version)):
        auc = client.get_run(mv.run_id).data.metrics.get("val_auc")
        tags = mv.tags
        aliases = " [champion]" if str(mv.version) == champion else ""
        lines.append(
            f"model v{mv.version}{aliases} ({tags.get('month')}): val_auc {auc:.3f}, "
            f"decision {tags.get('decision')}: {tags.get('reason')}"
        )
    return lines


def realized_lines(settings: Settings) -> list[str]:
    """One line per `model_performance` row: the champion against labels it never trained on."""
    from streamflow_mlops.pipelines.performance import realized_performance

    lines = []
    for row in realized_performance(settings.db_url):
        validation = "n/a" if row["validation_auc"] is None else f"{row['validation_auc']:.3f}"
        lines.append(
            f"champion v{row['model_version']} (trained {row['trained_month']}) on {row['month']}: realized AUC "
            f"{row['auc']:.3f} (validation {validation}), PR-AUC {row['pr_auc']:.3f}, lift@10% "
            f"{row['lift_at_10']:.2f}, Brier {row['brier']:.3f}, {row['rows']} labelled rows as_of {row['as_of']}"
        )
    return lines


def sample_prediction(settings: Settings) -> tuple[str, str]:
    with psycopg.connect(settings.db_url) as conn:
        user = conn.execute(
            "SELECT user_id FROM streamflow.labels WHERE as_of = (SELECT max(as_of) FROM streamflow.labels) "
            "ORDER BY user_id LIMIT 1"
        ).fetchone()[0]
    url = f"http://127.0.0.1:{settings.service_port}/predict"
    answer = httpx.post(url, json={"user_id": user}, timeout=10)
    curl = f"curl -s -X POST {url} -H 'content-type: application/json' -d '{{\"user_id\": \"{user}\"}}'"
    return curl, answer.text


def ensure_drops(settings: Settings) -> None:
    from streamflow_mlops.config.months import Month
    from streamflow_mlops.synthetic.generate import DropSpec, default_drift, write_drop

    for month in DEMO_MONTHS:
        if not (settings.drops_dir / month / "manifest.json").exists():
            m = Month.parse(month).number
            write_drop(DropSpec(m, drift=default_drift(m)), settings.drops_dir)
            say(f"generated {settings.drops_dir / month}")


class Stack:
    """The embedded stack as child processes: start, run the lifecycle, serve, stop."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.started = time.monotonic()
        self.mlflow_uri = f"http://127.0.0.1:{settings.mlflow_port}"
        self.airflow_url = f"http://127.0.0.1:{settings.airflow_port}"
        self.service_url = f"http://127.0.0.1:{settings.service_port}"
        self.evidently_url = f"http://127.0.0.1:{settings.evidently_port}"
        # Clients in this process talk to the MLflow server, as the DAG tasks and the service do.
        self.client_settings = settings.model_copy(update={"mlflow_tracking_uri_override": self.mlflow_uri})
        self.bin_dir = Path(sys.executable).parent
        self.processes: Processes | None = None
        self.api: AirflowAPI | None = None
        self.warm = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def start(self) -> None:
        settings = self.settings
        say(f"state dir {settings.state_dir}")
        url = up(settings)
        say(f"postgres ready ({'embedded' if settings.embedded else 'existing server'}: {redact_url(url)})")
        ensure_drops(settings)
        env = {**os.environ, **self.client_settings.client_env(), **airflow_settings(settings)}
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        # Through the environment, not argv: a command line (with the database password) is
        # readable by every local user in `ps`.
        env["MLFLOW_BACKEND_STORE_URI"] = settings.mlflow_backend_url
        # MLflow's server otherwise keeps seven job-consumer processes (GenAI evaluation, scorer
        # jobs) polling forever; the platform runs no MLflow jobs, so they only cost idle CPU.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        write_env_file(self.client_settings, {k: v for k, v in env.items() if k.startswith("AIRFLOW__")})
        self.processes = Processes(settings.state_dir / "logs", env)
        say("migrating the Airflow metadata database")
        subprocess.run(
            [str(self.bin_dir / "airflow"), "db", "migrate"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        say("starting MLflow, Airflow api-server, scheduler, dag-processor, triggerer")
        settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.processes.start(
            "mlflow",
            [
                str(self.bin_dir / "mlflow"),
                "server",
                "--artifacts-destination",
                str(settings.mlflow_artifacts_dir),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
            ],
            nice=settings.demo_nice,
        )
        # The scheduler and triggerer would each start a log server on all interfaces (Airflow binds
        # it to [::] whatever the config says); on one machine the api-server reads the log files
        # directly, so it isn't needed and nothing listens beyond 127.0.0.1.
        for component, options in (
            ("api-server", []),
            ("scheduler", ["--skip-serve-logs"]),
            ("dag-processor", []),
            ("triggerer", ["--skip-serve-logs"]),
        ):
            self.processes.start(
                f"airflow-{component}", [str(self.bin_dir / "airflow"), component, *options], nice=settings.demo_nice
            )
        # A second run has a champion already: the service can start while Airflow boots.
        self.warm = lifecycle_done(self.settings)
        if self.warm:
            self.launch_service()
        self.launch_dashboard()
        wait_for("MLflow", lambda: http_ok(f"{self.mlflow_uri}/health"), 180, self.processes)
        wait_for("Evidently UI", lambda: http_ok(f"{self.evidently_url}/api/version"), 120, self.processes)
        wait_for(
            "Airflow api-server", lambda: http_ok(f"{self.airflow_url}/api/v2/monitor/health"), 240, self.processes
        )
        passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
        self.api = AirflowAPI(self.airflow_url, json.loads(passwords.read_text())[AIRFLOW_USER])
        self.api.login()
        wait_for("DAGs parsed", lambda: all(self.api.has_dag(d) for d in LIFECYCLE_DAGS), 240, self.processes)
        say(f"Airflow up after {self.elapsed():.0f}s")

    def run_month_lifecycle(self, month: str, timeout: float = 900, poll: float = POLL_S) -> dict:
        """Trigger the ingest of one month and wait for the asset chain it starts to settle, the
        month's scoring by the resulting champion included; `timeout`: the longest wait with no
        run changing state."""
        before = {r["dag_run_id"] for d in (*LIFECYCLE_DAGS, SCORE_DAG) for r in self.api.runs(d)}
        conf = {"month": month}
        if self.month_loaded(month):
            # An unchanged drop emits no asset event, so its chain would not run again.
            say(f"{month} was loaded by an earlier, interrupted run: loading it again with force")
            conf["force"] = True
        run_id = self.api.trigger("streamflow_ingest", conf)
        say(f"triggered streamflow_ingest {month} ({run_id}); the asset chain takes it from there")
        runs = wait_for_chain(self.api, month, before, timeout, self.processes, poll)
        scores = wait_for_scores(
            self.api, month, before, timeout, self.processes, lambda: self.champion_and_scorer(month), poll
        )
        if scores:
            runs[SCORE_DAG] = scores[0]
        say(f"{month} done after {self.elapsed():.0f}s")
        return runs

    def month_loaded(self, month: str) -> bool:
        return month in loaded_months(self.settings)

    def champion_and_scorer(self, month: str) -> tuple[str | None, str | None]:
        """The champion's version and the model version that scored `month` (None: not scored)."""
        with psycopg.connect(self.settings.db_url) as conn:
            (scored_by,) = conn.execute(
                "SELECT max(model_version) FROM streamflow.churn_scores WHERE month = %s", (month,)
            ).fetchone()
        return _champion_version(self.client_settings), scored_by

    def lifecycle(self) -> None:
        if self.warm:
            say("lifecycle already ran: reusing the warehouse, features and champion")
            return
        for month in DEMO_MONTHS:
            self.run_month_lifecycle(month)

    def launch_service(self) -> None:
        if "churn-service" not in self.processes.running:
            self.processes.start(
                "churn-service",
                [
                    str(self.bin_dir / "bentoml"),
                    "serve",
                    "bentos.churn_service.service:ChurnService",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.settings.service_port),
                ],
                cwd=self.settings.repo_root,
            )

    def launch_dashboard(self) -> None:
        """Evidently's own UI over the workspace the drift and score DAGs fill (monitoring/dashboard.py)."""
        workspace = self.settings.evidently_workspace
        workspace.mkdir(parents=True, exist_ok=True)
        # Evidently's UI reports usage to its vendor unless told not to; a local demo shouldn't.
        self.processes.env.setdefault("DO_NOT_TRACK", "1")
        self.processes.start(
            "evidently-ui",
            [
                str(self.bin_dir / "evidently"),
                "ui",
                "--workspace",
                str(workspace),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.settings.evidently_port),
            ],
            nice=self.settings.demo_nice,
        )

    def serve(self) -> None:
        self.launch_service()
        wait_for("churn service", lambda: http_ok(f"{self.service_url}/readyz"), 240, self.processes)

    def report(self) -> None:
        ready = self.elapsed()
        curl, answer = sample_prediction(self.client_settings)
        print()
        print(f"StreamFlow is up ({ready:.0f}s).")
        print(f"  Airflow UI   {self.airflow_url}   login {AIRFLOW_USER} / {self.api.password}")
        print(f"  MLflow UI    {self.mlflow_uri}")
        print(f"  Churn API    {self.service_url}   (docs at {self.service_url}/docs)")
        print(f'  Monitoring   {self.evidently_url}   (Evidently UI, project "streamflow churn")')
        print(f"  Scores       {self.settings.state_dir / 'scores'}   (retention lists; table streamflow.churn_scores)")
        print(f"  Shell env    source {self.settings.state_dir / 'env'}")
        print(f"\nSample prediction:\n  {curl}\n  {answer}\n\nLifecycle:")
        for line in lifecycle_summary(self.client_settings):
            print(f"  {line}")
        (self.settings.state_dir / "demo_ready_seconds").write_text(f"{ready:.1f}\n")

    def watch(self) -> None:
        print("\nServing; press Ctrl-C to stop everything.", flush=True)
        while True:
            self.processes.check()
            time.sleep(2)

    def stop(self) -> None:
        say("stopping services")
        if self.processes is not None:
            self.processes.stop()
        if self.settings.embedded:
            stop_embedded(self.settings)
        say("stopped")


def stop_on_sigterm(signum: int, frame: object) -> None:
    """`kill <demo pid>` (or a supervisor stopping it) stops the stack like Ctrl-C does: without it
    Python dies at once on SIGTERM and leaves Airflow, MLflow, the service and Postgres running."""
    raise KeyboardInterrupt


def run(settings: Settings, serve_forever: bool = True) -> None:
    """`make demo`: start, run the lifecycle, serve, report; Ctrl-C (or SIGTERM) stops everything."""
    stack = Stack(settings)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals are set there only
    if in_main_thread:
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        stack.start()
        stack.lifecycle()
        stack.serve()
        stack.report()
        if serve_forever:
            stack.watch()
    except KeyboardInterrupt:
        print()
    finally:
        # A second Ctrl-C or SIGTERM must not cut the stopping short (and leave services running).
        signals = (signal.SIGINT, signal.SIGTERM) if in_main_thread else ()
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
        try:
            stack.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
