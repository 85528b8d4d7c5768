"""The first month through a fresh compose stack with `--profile celery` and the CeleryExecutor.

Same checks as the LocalExecutor stack for month_000: every task runs on the Celery worker, the
champion alias appears, the running churn service turns ready within a minute of the promotion
without a restart and serves the champion on month_000's online values.
"""

from __future__ import annotations

import pytest

from tests.compose.conftest import managed_stack
from tests.compose.stack import (
    READY_AFTER_PROMOTION_S,
    ComposeStack,
    csv_rows,
    predict,
    ready,
    run_month_lifecycle,
    wait_until,
)


@pytest.fixture(scope="module")
def stack(request, engine, timings):
    def setup(stack: ComposeStack) -> None:
        stack.generate_drops(["--months", "1"])
        with timings.phase("celery: up -d --build --wait"):
            stack.up()

    yield from managed_stack(request, timings, ComposeStack("celery", celery=True), setup)


def test_month_000_runs_on_the_celery_worker_and_its_champion_is_served(stack, timings):
    for service in stack.services:
        assert stack.inspect(service)["State"].get("Health", {}).get("Status") == "healthy", service
    api = stack.airflow_api()
    started = stack.inspect("churn-service")["State"]["StartedAt"]

    with timings.phase("celery: month_000 (ingest -> features -> drift -> train -> promote)"):
        runs = run_month_lifecycle(stack, api, "month_000")
    assert runs["streamflow_train"]["state"] == "success"
    worker = stack.inspect("airflow-worker")["Config"]["Hostname"]
    for dag_id, run in runs.items():
        instances = stack.airflow_get(f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances")
        ran = [ti for ti in instances["task_instances"] if ti["state"] == "success"]
        assert ran and {ti["hostname"] for ti in ran} == {worker}, (dag_id, ran)

    champion = stack.champion()["version"]
    seconds = wait_until("churn-service /readyz after the first promotion", lambda: ready(stack.service_url), 120)
    timings.notes.append(f"celery: churn-service ready {seconds:.0f}s after streamflow_train finished")
    assert seconds <= READY_AFTER_PROMOTION_S
    service = stack.inspect("churn-service")
    assert service["RestartCount"] == 0 and service["State"]["StartedAt"] == started

    month_000 = csv_rows(stack.drops / "month_000" / "usage_agg_30d.csv")
    user = next(iter(month_000))
    answer = predict(stack.service_url, user)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == {"name": "streamflow_churn", "version": champion}
    assert answer.json()["features"]["watch_hours_30d"] == pytest.approx(float(month_000[user]["watch_hours_30d"]))
