"""The spark engine through a compose stack: `--profile spark` and STREAMFLOW_ENGINE=spark.

A Spark master and two workers beside Airflow (LocalExecutor); month_000's ingest, triggered
through Airflow's REST API, loads the month through the cluster: its task is the driver of a
Spark application, both workers run an executor of it and finish its tasks, and the lake volume
holds every raw and snapshot table of the month with the drop's rows, where the warehouse holds
none. Then the rest of the month follows on the cluster (features materialized into Redis by the
executors, drift, training on Feast's Spark training set, promotion) and the churn service serves
the champion on the values the cluster materialized; the champion's scoring run then writes
every user of the month to the lake's churn_scores from the executors.
"""

from __future__ import annotations

import json
from datetime import date, datetime

import httpx
import pytest

from streamflow_mlops.config.schema import FEATURE_GROUPS, RAW_TABLES
from streamflow_mlops.data import lake
from streamflow_mlops.platform.lifecycle import AirflowAPI, wait_for_chain
from tests.compose.conftest import managed_stack
from tests.compose.stack import (
    LIFECYCLE_DAGS,
    SERVICES,
    SPARK_IMAGES,
    SPARK_SERVICES,
    ComposeStack,
    csv_rows,
    predict,
    ready,
    run,
    wait_for_run,
    wait_until,
)

MONTH, AS_OF = "month_000", date(2024, 1, 31)
LAKE = "/opt/streamflow/lake"
WORKERS = 2
STACK_SERVICES = tuple(SERVICES) + SPARK_SERVICES

# Run in a worker's container: the executors it ran for the given applications (its own JSON) and
# the tasks they finished (their logs under SPARK_WORKER_DIR/<app>/<executor>/stderr).
WORKER_REPORT = """
import json, os, pathlib, sys, urllib.request
apps = set(sys.argv[1:])
state = json.load(urllib.request.urlopen("http://localhost:8081/json/", timeout=10))
executors = [e for e in state["executors"] + state["finishedexecutors"] if e["appid"] in apps]
logs = [p for app in apps for p in pathlib.Path(os.environ["SPARK_WORKER_DIR"], app).glob("*/stderr")]
tasks = sum(p.read_text(errors="replace").count("Executor: Finished task") for p in logs)
print(json.dumps({"executors": len(executors), "tasks": tasks}))
"""

# Run in the Airflow scheduler's container (the driver's view of the lake): rows per table folder.
LAKE_ROWS = """
import json, sys, pyarrow.parquet as pq
print(json.dumps({path: pq.read_table(path).num_rows for path in sys.argv[1:]}))
"""


@pytest.fixture(scope="module")
def stack(request, engine, timings):
    def setup(stack: ComposeStack) -> None:
        stack.generate_drops(["--months", "1"])
        stack.build(timings)
        with timings.phase("spark: up -d --build --wait"):
            stack.up()

    yield from managed_stack(request, timings, ComposeStack("spark", spark=True, services=STACK_SERVICES), setup)


@pytest.fixture(scope="module")
def api(stack) -> AirflowAPI:
    return stack.airflow_api()


def master_state(stack: ComposeStack) -> dict:
    """The master's JSON through its UI port, published on 127.0.0.1."""
    return httpx.get(f"{stack.url('STREAMFLOW_SPARK_UI_PORT')}/json/", timeout=10).json()


def test_two_workers_serve_the_master_on_localhost_as_non_root(stack):
    master = master_state(stack)
    assert master["status"] == "ALIVE" and master["aliveworkers"] == WORKERS, master["workers"]
    assert master["cores"] == WORKERS
    bindings = stack.inspect("spark-master")["NetworkSettings"]["Ports"]
    assert {b["HostIp"] for b in bindings["8080/tcp"]} == {"127.0.0.1"}
    assert not bindings.get("7077/tcp"), "the master's RPC port must not be published"
    for service in SPARK_IMAGES.values():
        image = stack.inspect(service)["Config"]["Image"]
        uid = run(["docker", "run", "--rm", "--entrypoint", "id", image, "-u"], timeout=120).stdout.strip()
        assert uid != "0", f"{image} runs as root"
    assert stack.inspect("airflow-scheduler")["Config"]["Image"].endswith("-spark")


@pytest.fixture(scope="module")
def ingest(stack, api, timings) -> dict:
    """month_000's ingest through the REST API, to its end; the runs before it, for the chain it starts."""
    before = {run["dag_run_id"] for dag_id in LIFECYCLE_DAGS for run in api.runs(dag_id)}
    with timings.phase("spark: month_000 ingest on the cluster"):
        run_id = api.trigger("streamflow_ingest", {"month": MONTH})
        state = wait_for_run(api, "streamflow_ingest", run_id, timeout=900)
    return {"run_id": run_id, "state": state, "before": before}


def test_month_000_ingest_runs_on_both_workers(stack, api, ingest, timings):
    assert ingest["state"] == "success"
    load = api.task_instances("streamflow_ingest", ingest["run_id"])
    started = min(ti["start_date"] for ti in load.values() if ti["start_date"])
    ended = max(ti["end_date"] for ti in load.values() if ti["end_date"])
    master = master_state(stack)
    apps = [
        app
        for app in master["completedapps"] + master["activeapps"]
        if app["name"] == "streamflow" and iso_ms(started) <= app["starttime"] <= iso_ms(ended)
    ]
    assert apps, f"no Spark application of the ingest on the master: {master['completedapps']}"
    reports = [
        json.loads(stack.exec("spark-worker", "python", "-c", WORKER_REPORT, *(a["id"] for a in apps), index=i))
        for i in range(1, len(stack.containers("spark-worker")) + 1)
    ]
    timings.notes.append(f"spark: the ingest's tasks per worker {[r['tasks'] for r in reports]}")
    assert len(reports) == WORKERS
    assert all(r["executors"] >= 1 and r["tasks"] >= 1 for r in reports), reports


def test_the_lake_holds_month_000_and_the_warehouse_does_not(stack, ingest):
    assert ingest["state"] == "success"
    drop = stack.drops / MONTH
    expected = {t.name: len(csv_rows(drop / t.file)) for t in RAW_TABLES}
    expected |= {g.table: expected["users"] for g in FEATURE_GROUPS}
    folders = {table: lake.partition_url(LAKE, table, AS_OF) for table in expected}
    rows = json.loads(stack.exec("airflow-scheduler", "python", "-c", LAKE_ROWS, *folders.values()))
    assert {table: rows[folder] for table, folder in folders.items()} == expected
    recorded = stack.psql(f"SELECT status, row_counts FROM streamflow.ingestion_runs WHERE month = '{MONTH}'")
    status, counts = recorded.split("|", 1)
    assert status == "success" and json.loads(counts) == expected
    assert stack.psql("SELECT count(*) FROM streamflow.users").strip() == "0"


def test_the_month_through_features_train_and_score_is_served(stack, api, ingest, timings):
    with timings.phase("spark: month_000 (features -> drift -> train -> promote)"):
        runs = wait_for_chain(api, MONTH, ingest["before"], timeout=1200, processes=stack)
    assert runs["streamflow_train"]["state"] == "success"
    champion = stack.champion()["version"]
    wait_until("churn-service /readyz after the first promotion", lambda: ready(stack.service_url), 120)
    month = csv_rows(stack.drops / MONTH / "usage_agg_30d.csv")
    user = next(iter(month))
    answer = predict(stack.service_url, user)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == {"name": "streamflow_churn", "version": champion}
    assert answer.json()["features"]["watch_hours_30d"] == pytest.approx(float(month[user]["watch_hours_30d"]))

    # The promotion's champion event scores the month on the executors into the lake's churn_scores
    # (the features event's run before it found no champion and skipped its `score` task).
    def scored() -> bool:
        after = [r for r in api.runs("streamflow_score") if r["dag_run_id"] not in ingest["before"]]
        failed = [r["dag_run_id"] for r in after if r["state"] == "failed"]
        assert not failed, f"streamflow_score failed: {failed}"
        done = [r for r in after if r["state"] == "success"]
        return any(api.task_states("streamflow_score", r["dag_run_id"]).get("score") == "success" for r in done)

    with timings.phase("spark: month_000 scored on the cluster"):
        wait_until("streamflow_score after the promotion", scored, 900, every=5)
    folder = lake.partition_url(LAKE, "churn_scores", MONTH, "month")
    rows = json.loads(stack.exec("airflow-scheduler", "python", "-c", LAKE_ROWS, folder))
    assert rows[folder] == len(csv_rows(stack.drops / MONTH / "users.csv"))


def iso_ms(timestamp: str) -> int:
    """An Airflow API timestamp (ISO 8601, UTC) in epoch milliseconds, as the master reports times."""
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)
