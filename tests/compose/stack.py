"""The compose stack under test, driven from outside the containers as a user would.

One `ComposeStack` is one compose project with its own env file (written by docker/init-env.sh),
free host ports on 127.0.0.1 and its own drops folder, so it never touches a developer's `.env`
or a stack already running from this checkout.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from streamflow_mlops.platform.lifecycle import AirflowAPI, wait_for_chain

REPO = Path(__file__).resolve().parents[2]
# The machine-local Docker engine CI uses when no registry is reachable (../shared beside the clone).
ENGINE_UP = REPO.parent / "shared" / "container-engine" / "up"
# Where that engine puts a `docker` whose `docker build` has BuildKit without buildx, which
# `bentoml containerize` needs (its README); a regular Docker install has buildx instead.
ENGINE_BIN = Path("/opt/container-engine/bin")
STATE = REPO / ".streamflow"
LOGS = STATE / "compose-logs"
# Long-running services: each must be up (and healthy) for the whole test.
SERVICES = (
    "postgres",
    "redis",
    "mlflow",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "churn-service",
)
CELERY_SERVICES = ("airflow-broker", "airflow-worker")
SPARK_SERVICES = ("spark-master", "spark-worker")
LIFECYCLE_DAGS = ("streamflow_ingest", "streamflow_features", "streamflow_drift", "streamflow_train")
# DESIGN: the service picks up a newly promoted champion without a restart (it polls every ~10 s).
READY_AFTER_PROMOTION_S = 60
BUILT_IMAGES = {"mlflow": "mlflow", "churn-service": "churn-service", "airflow": "airflow-init"}
SPARK_IMAGES = {"spark": "spark-master"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str], timeout: float, env: dict[str, str] | None = None, check: bool = True, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def wait_until(what: str, done: Callable[[], bool], timeout: float, every: float = 1.0) -> float:
    """Seconds it took `done()` to turn true; raises TimeoutError with `what` after `timeout`."""
    started = time.monotonic()
    while True:
        if done():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


@dataclass
class Timings:
    """How long each phase took, printed at the end of the session (and kept in compose-logs/)."""

    phases: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        print(f"[compose] {name} ...", flush=True)
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.phases.append((name, seconds))
            print(f"[compose] {name}: {seconds:.0f}s", flush=True)

    def lines(self) -> list[str]:
        return [f"{seconds:7.0f}s  {name}" for name, seconds in self.phases] + self.notes


def ensure_engine(timings: Timings) -> None:
    """Start the machine's Docker engine when this checkout sits beside one, then require Compose v2."""
    if ENGINE_UP.is_file():
        LOGS.mkdir(parents=True, exist_ok=True)
        with timings.phase("engine up (../shared/container-engine/up)"):
            result = run(["bash", str(ENGINE_UP)], timeout=1800, check=False, cwd=REPO)
            (LOGS / "engine-up.log").write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise RuntimeError(f"{ENGINE_UP} exited {result.returncode}; see {LOGS / 'engine-up.log'}")
        if ENGINE_BIN.is_dir():
            os.environ["PATH"] = f"{ENGINE_BIN}{os.pathsep}{os.environ['PATH']}"
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        if not shutil.which("docker") or run(command, timeout=60, check=False).returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` fails: make test-compose needs a Docker engine with Compose v2")


class ComposeStack:
    def __init__(
        self,
        name: str,
        celery: bool = False,
        workers: int = 1,
        spark: bool = False,
        services: tuple[str, ...] | None = None,
    ) -> None:
        """`workers`: Celery workers (`up --scale airflow-worker=N`), with `celery` only. `spark`:
        the `spark` profile and STREAMFLOW_ENGINE=spark. `services`: start only these (and what
        they depend on) instead of every service of the profiles."""
        self.name = name
        self.project = f"streamflow-test-{name}"
        self.celery = celery
        self.spark = spark
        self.workers = workers if celery else 0
        self.work = STATE / "compose-test" / name
        self.env_file = self.work / "env"
        self.drops = self.work / "drops"
        self.only = services
        self.services = services or SERVICES + (CELERY_SERVICES if celery else ()) + (SPARK_SERVICES if spark else ())
        self.built_images = BUILT_IMAGES | (SPARK_IMAGES if spark else {})
        self.env: dict[str, str] = {}

    # --- setup -------------------------------------------------------------------------------

    def write_env(self) -> None:
        """docker/init-env.sh into our own file, then this stack's ports, drops folder and executor."""
        if self.work.exists():
            shutil.rmtree(self.work)
        self.drops.mkdir(parents=True)
        run(["bash", str(REPO / "docker" / "init-env.sh"), str(self.env_file)], timeout=60, cwd=REPO)
        overrides = {
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_PROFILES": ",".join(p for p, on in (("celery", self.celery), ("spark", self.spark)) if on),
            "AIRFLOW_EXECUTOR": "CeleryExecutor" if self.celery else "LocalExecutor",
            "STREAMFLOW_ENGINE": "spark" if self.spark else "postgres",
            "STREAMFLOW_DROPS_HOST_DIR": str(self.drops),
            "STREAMFLOW_AIRFLOW_PORT": str(free_port()),
            "STREAMFLOW_MLFLOW_PORT": str(free_port()),
            "STREAMFLOW_SERVICE_PORT": str(free_port()),
            "STREAMFLOW_EVIDENTLY_PORT": str(free_port()),
            "STREAMFLOW_SPARK_UI_PORT": str(free_port()),
            # The lifecycle runs unattended; the approval flow is tested against a live api-server in tests/e2e.
            "STREAMFLOW_APPROVAL": "auto",
        }
        lines = []
        for line in self.env_file.read_text().splitlines():
            key = line.split("=", 1)[0]
            lines.append(f"{key}={overrides.pop(key)}" if key in overrides and not line.startswith("#") else line)
        assert not overrides, f".env.example lost {sorted(overrides)}"
        self.env_file.write_text("\n".join(lines) + "\n")
        self.env = dict(
            line.split("=", 1) for line in self.env_file.read_text().splitlines() if "=" in line and line[0] != "#"
        )

    def generate_drops(self, *specs: list[str]) -> None:
        """`python -m streamflow_mlops generate` on the host into this stack's drops folder."""
        for spec in specs:
            command = [sys.executable, "-m", "streamflow_mlops", "generate", "--out", str(self.drops), *spec]
            run(command, timeout=300, cwd=REPO)

    # --- compose -----------------------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        # Variables come from our env file only: the caller's shell may hold another stack's.
        env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "DOCKER_HOST", "TMPDIR")}
        command = ["docker", "compose", "--project-directory", str(REPO), "-p", self.project]
        command += ["--env-file", str(self.env_file), *args]
        return run(command, timeout=timeout, env=env, check=check, cwd=REPO)

    def build(self, timings: Timings) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        for image, service in self.built_images.items():
            with timings.phase(f"build image {image}"):
                result = self.compose("build", service, timeout=1800, check=False)
                (LOGS / f"build-{image}.log").write_text(result.stdout + result.stderr)
                if result.returncode != 0:
                    raise RuntimeError(f"building {image} failed; see {LOGS / f'build-{image}.log'}")

    def up(self) -> None:
        scale = ["--scale", f"airflow-worker={self.workers}"] if self.workers > 1 else []
        self.compose("up", "-d", "--build", "--wait", "--wait-timeout", "600", *scale, *(self.only or ()), timeout=900)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=300, check=False)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-a", "-q", service).stdout.split()

    def container(self, service: str) -> str:
        ids = self.containers(service)
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict:
        """`docker inspect` of the service's one container."""
        return json.loads(run(["docker", "inspect", self.container(service)], timeout=60).stdout)[0]

    def inspect_all(self, service: str) -> list[dict]:
        """`docker inspect` of each of the service's containers (a scaled service has several)."""
        return json.loads(run(["docker", "inspect", *self.containers(service)], timeout=60).stdout)

    def check(self, skip: tuple[str, ...] = ()) -> None:
        """Every long-running container still up: what wait_for_chain asks of its processes
        (but `skip`'s services, which a test is killing on purpose)."""
        for service in self.services:
            if service in skip:
                continue
            for container in self.inspect_all(service):
                state = container["State"]
                if state["Status"] != "running":
                    raise RuntimeError(f"{service} is {state['Status']} (exit {state['ExitCode']})")

    def wait_healthy(self, timeout: float = 600) -> float:
        """Seconds until every long-running service runs and, where it has a health check, is healthy."""

        def healthy() -> bool:
            states = [container["State"] for service in self.services for container in self.inspect_all(service)]
            return all(s["Status"] == "running" and s.get("Health", {}).get("Status") == "healthy" for s in states)

        return wait_until(f"{self.name}: every service healthy", healthy, timeout, every=3)

    def exec(self, service: str, *command: str, timeout: float = 600, index: int = 1) -> str:
        """`command` in the service's container (the `index`-th of a scaled service), its stdout."""
        return self.compose("exec", "-T", "--index", str(index), service, *command, timeout=timeout).stdout

    def psql(self, sql: str) -> str:
        user = self.env["POSTGRES_USER"]
        return self.exec("postgres", "psql", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", "streamflow", "-At", "-c", sql)

    def save_logs(self, reason: str) -> Path:
        """Every container's log, `ps` and Airflow's task logs under .streamflow/compose-logs/<stack>/."""
        target = LOGS / self.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "reason.txt").write_text(reason)
        (target / "ps.txt").write_text(self.compose("ps", "-a", check=False).stdout)
        for container in self.compose("ps", "-a", "-q", check=False).stdout.split():
            name = run(["docker", "inspect", "-f", "{{.Name}}", container], timeout=60, check=False).stdout
            log = run(["docker", "logs", "--timestamps", container], timeout=120, check=False)
            (target / f"{name.strip().strip('/')}.log").write_text(log.stdout + log.stderr)
        self.compose("cp", "airflow-scheduler:/opt/airflow/logs", str(target / "airflow-task-logs"), check=False)
        return target

    # --- the services, from the host ----------------------------------------------------------

    def url(self, port_key: str) -> str:
        return f"http://127.0.0.1:{self.env[port_key]}"

    @property
    def service_url(self) -> str:
        return self.url("STREAMFLOW_SERVICE_PORT")

    @property
    def mlflow_url(self) -> str:
        return self.url("STREAMFLOW_MLFLOW_PORT")

    @property
    def airflow_url(self) -> str:
        return self.url("STREAMFLOW_AIRFLOW_PORT")

    def airflow_api(self) -> AirflowAPI:
        """The demo's REST client, signed in as the generated admin, once every lifecycle DAG is parsed."""
        api = AirflowAPI(self.airflow_url, self.env["AIRFLOW_ADMIN_PASSWORD"])
        api.login()
        wait_until("the DAGs parsed", lambda: all(api.has_dag(d) for d in LIFECYCLE_DAGS), 180, every=3)
        return api

    def airflow_request(self, method: str, path: str, **kwargs) -> dict:
        """A call of Airflow's REST API with a JWT from /auth/token for the generated admin password."""
        login = {"username": self.env["AIRFLOW_ADMIN_USERNAME"], "password": self.env["AIRFLOW_ADMIN_PASSWORD"]}
        token = httpx.post(f"{self.airflow_url}/auth/token", json=login, timeout=30)
        token.raise_for_status()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        answer = httpx.request(method, f"{self.airflow_url}{path}", headers=headers, timeout=30, **kwargs)
        answer.raise_for_status()
        return answer.json()

    def airflow_get(self, path: str) -> dict:
        return self.airflow_request("GET", path)

    def champion(self) -> dict | None:
        """The MLflow version the `champion` alias points at, through MLflow's REST API."""
        answer = httpx.get(
            f"{self.mlflow_url}/api/2.0/mlflow/registered-models/alias",
            params={"name": "streamflow_churn", "alias": "champion"},
            timeout=10,
        )
        if answer.status_code == 404 or "RESOURCE_DOES_NOT_EXIST" in answer.text:
            return None
        answer.raise_for_status()
        return answer.json()["model_version"]


# --- the lifecycle, through Airflow's REST API ---------------------------------------------------


def run_month_lifecycle(stack: ComposeStack, api: AirflowAPI, month: str) -> dict:
    """Trigger the month's ingest through the REST API and wait for the asset chain it starts."""
    before = {run["dag_run_id"] for dag_id in LIFECYCLE_DAGS for run in api.runs(dag_id)}
    api.trigger("streamflow_ingest", {"month": month})
    return wait_for_chain(api, month, before, timeout=1200, processes=stack)


def wait_for_run(api: AirflowAPI, dag_id: str, run_id: str, timeout: float = 600) -> str:
    state = {}

    def finished() -> bool:
        state["run"] = next(run for run in api.runs(dag_id) if run["dag_run_id"] == run_id)
        return state["run"]["state"] in ("success", "failed")

    wait_until(f"{dag_id} {run_id}", finished, timeout, every=2)
    return state["run"]["state"]


# Operational tables a rejected or failed load may touch: its own ingestion_runs row, and tables
# written by other runs meanwhile (the rollback's champion event starts streamflow_score; the
# service logs predictions): outputs, not the data a load that did not happen must keep.
OPERATIONAL = {
    "ingestion_runs", "prediction_log", "churn_scores", "model_performance", "drift_reports", "retention_campaigns",
    "campaign_outcomes",
}  # fmt: skip


def warehouse_fingerprint(stack: ComposeStack) -> dict[str, str]:
    """Row count and an md5 of every row of every warehouse table (partitions through their parent)."""
    tables = stack.psql(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'streamflow' AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1"
    ).split()
    # Feast's point-in-time joins stage their entity rows in a `feast_entity_df_<uuid>` table for the
    # length of one retrieval (a scoring run may be reading while the bad batch is checked).
    tables = [table for table in tables if table not in OPERATIONAL and not table.startswith("feast_entity_df_")]
    assert {"users", "subscriptions", "labels", "usage_agg_30d_snapshots"} <= set(tables), tables
    query = " UNION ALL ".join(
        f"SELECT '{table}', count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
        f"FROM streamflow.{table} t"
        for table in tables
    )
    return dict(line.split("|", 1) for line in stack.psql(query).splitlines())


def predict(url: str, user_id: str) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"user_id": user_id}, timeout=30)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as file:
        return {row["user_id"]: row for row in csv.DictReader(file)}
