"""The lifecycle through the compose stack (LocalExecutor), asserted from outside the containers.

A fresh stack (`docker compose up -d --build --wait`), months triggered through Airflow's REST
API with the generated admin password: the first champion reaches the running churn service
without a restart, month_001's features are served, a rollback moves the served version, a bad
batch leaves the warehouse as it was, and the bento built inside the Airflow image, turned into
an image by `bentoml containerize`, serves the same answer on the compose network.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from streamflow_mlops.platform.lifecycle import AirflowAPI
from tests.compose.conftest import managed_stack
from tests.compose.stack import (
    BUILT_IMAGES,
    LOGS,
    READY_AFTER_PROMOTION_S,
    STATE,
    ComposeStack,
    csv_rows,
    free_port,
    predict,
    ready,
    run,
    run_month_lifecycle,
    wait_for_run,
    wait_until,
    warehouse_fingerprint,
)


@pytest.fixture(scope="module")
def stack(request, engine, timings):
    def setup(stack: ComposeStack) -> None:
        stack.generate_drops(["--months", "2"], ["--start", "2", "--months", "1", "--broken", "negative_fee"])
        stack.build(timings)
        with timings.phase("local: up -d --build --wait"):
            stack.up()

    yield from managed_stack(request, timings, ComposeStack("local"), setup)


@pytest.fixture(scope="module")
def api(stack) -> AirflowAPI:
    return stack.airflow_api()


def test_the_stack_is_healthy_local_only_and_non_root(stack):
    for service in stack.services:
        state = stack.inspect(service)["State"]
        assert state["Status"] == "running" and state.get("Health", {}).get("Status") == "healthy", (service, state)
    for service, port in (("airflow-apiserver", 8080), ("mlflow", 5000), ("churn-service", 3000)):
        bindings = stack.inspect(service)["NetworkSettings"]["Ports"][f"{port}/tcp"]
        assert {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}, (service, bindings)
    for service in BUILT_IMAGES.values():
        image = stack.inspect(service)["Config"]["Image"]
        uid = run(["docker", "run", "--rm", "--entrypoint", "id", image, "-u"], timeout=120).stdout.strip()
        assert uid != "0", f"{image} runs as root"


def test_first_champion_is_served_within_a_minute_without_a_restart(stack, api, timings):
    service = stack.inspect("churn-service")["State"]
    assert not ready(stack.service_url) and stack.champion() is None
    with timings.phase("local: month_000 (ingest -> features -> drift -> train -> promote)"):
        runs = run_month_lifecycle(stack, api, "month_000")
    assert runs["streamflow_train"]["state"] == "success"
    assert stack.champion()["version"] == "1"
    seconds = wait_until("churn-service /readyz after the first promotion", lambda: ready(stack.service_url), 120)
    timings.notes.append(f"churn-service ready {seconds:.0f}s after streamflow_train finished (limit 60s)")
    assert seconds <= READY_AFTER_PROMOTION_S
    after = stack.inspect("churn-service")
    assert after["RestartCount"] == 0 and after["State"]["StartedAt"] == service["StartedAt"]


def test_predict_answers_with_the_champion_and_month_001_online_values(stack, api, timings):
    with timings.phase("local: month_001 (drifted: retrain)"):
        runs = run_month_lifecycle(stack, api, "month_001")
    assert runs["streamflow_train"]["state"] == "success"
    champion = stack.champion()["version"]
    month_000 = csv_rows(stack.drops / "month_000" / "usage_agg_30d.csv")
    month_001 = csv_rows(stack.drops / "month_001" / "usage_agg_30d.csv")
    user = next(
        u for u in month_001 if u in month_000 and month_000[u]["watch_hours_30d"] != month_001[u]["watch_hours_30d"]
    )
    wait_until(
        f"churn-service serving version {champion}",
        lambda: predict(stack.service_url, user).json().get("model", {}).get("version") == champion,
        60,
    )
    answer = predict(stack.service_url, user)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["user_id"] == user and body["model"] == {"name": "streamflow_churn", "version": champion}
    assert body["features"]["watch_hours_30d"] == pytest.approx(float(month_001[user]["watch_hours_30d"]))


def test_rollback_through_the_rest_api_changes_the_served_version(stack, api, timings):
    user = next(iter(csv_rows(stack.drops / "month_001" / "users.csv")))
    before = stack.champion()["version"]
    # The previous champion when month_001's model was promoted, else the challenger it rejected.
    conf = {"version": "", "reason": "compose test"} if before != "1" else {"version": "2", "reason": "compose test"}
    with timings.phase("local: rollback"):
        run_id = api.trigger("streamflow_rollback", conf)
        assert wait_for_run(api, "streamflow_rollback", run_id) == "success"
        after = stack.champion()["version"]
        assert after != before
        wait_until(
            f"churn-service serving version {after}",
            lambda: predict(stack.service_url, user).json().get("model", {}).get("version") == after,
            60,
        )


def test_a_bad_batch_is_rejected_and_leaves_the_warehouse_unchanged(stack, api, timings):
    before = warehouse_fingerprint(stack)
    with timings.phase("local: bad batch month_002"):
        run_id = api.trigger("streamflow_ingest", {"month": "month_002"})
        assert wait_for_run(api, "streamflow_ingest", run_id) == "failed"
    assert warehouse_fingerprint(stack) == before
    rows = stack.psql("SELECT status FROM streamflow.ingestion_runs WHERE month = 'month_002'").split()
    assert rows == ["rejected"]
    assert "month_002-" in stack.exec("airflow-scheduler", "ls", "/opt/streamflow/state/quarantine")


def test_the_bento_built_in_the_airflow_image_serves_the_same_prediction(stack, timings):
    """`python -m streamflow_mlops bento` in the Airflow image, `bentoml containerize` on the host."""
    home = STATE / "compose-test" / "bentoml"
    shutil.rmtree(home, ignore_errors=True)  # a new bento each run: don't pile up the old ones
    env = {"BENTOML_HOME": str(home), "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    with timings.phase("bento: build in the airflow image"):
        built = stack.exec("airflow-scheduler", "python", "-m", "streamflow_mlops", "bento")
        tag = re.search(r"built bento (\S+)", built).group(1)
        exported = "/opt/streamflow/state/churn_service.bento"
        stack.exec("airflow-scheduler", "bentoml", "export", tag, exported)
        stack.compose("cp", f"airflow-scheduler:{exported}", str(STATE / "compose-test" / "churn_service.bento"))
        bentoml = str(Path(sys.executable).parent / "bentoml")
        run([bentoml, "import", str(STATE / "compose-test" / "churn_service.bento")], timeout=300, env=env)
    image = f"streamflow-churn-bento:{tag.split(':')[1]}"
    with timings.phase("bento: bentoml containerize"):
        result = run([bentoml, "containerize", tag, "-t", image], timeout=1800, env=env, check=False)
        (LOGS / "bento-containerize.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, f"bentoml containerize failed; see {LOGS / 'bento-containerize.log'}"
    timings.notes.append(f"image {image}: {image_size(image)}")
    assert run(["docker", "run", "--rm", "--entrypoint", "id", image, "-u"], timeout=120).stdout.strip() != "0"
    # The churn service's own settings (database, MLflow, Feast stores), minus where it keeps its
    # files: the bento has its own BentoML home and repository layout. Through a 0600 file: they
    # hold the database password.
    env_file = STATE / "compose-test" / "bento.env"
    env_file.touch(mode=0o600)
    service_env = stack.inspect("churn-service")["Config"]["Env"]
    skip = ("STREAMFLOW_REPO=", "STREAMFLOW_HOME=", "STREAMFLOW_DROPS_DIR=")
    env_file.write_text(
        "".join(f"{e}\n" for e in service_env if e.startswith(("STREAMFLOW_", "MLFLOW_")) and not e.startswith(skip))
    )
    port = free_port()
    name = f"{stack.project}-bento"
    command = [
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--network",
        f"{stack.project}_default",
        "--env-file",
        str(env_file),
    ]
    command += ["-p", f"127.0.0.1:{port}:3000", image]
    run(command, timeout=120)
    try:
        with timings.phase("bento: container ready"):
            wait_until("the bento container's /readyz", lambda: ready(f"http://127.0.0.1:{port}"), 180)
        user = next(iter(csv_rows(stack.drops / "month_001" / "users.csv")))
        from_bento = predict(f"http://127.0.0.1:{port}", user)
        from_service = predict(stack.service_url, user)
        assert from_bento.status_code == 200, from_bento.text
        for key in ("churn_probability", "model", "features", "threshold"):
            assert from_bento.json()[key] == from_service.json()[key], key
    finally:
        logs = run(["docker", "logs", name], timeout=60, check=False)
        (LOGS / "bento-container.log").write_text(logs.stdout + logs.stderr)
        run(["docker", "rm", "-f", name], timeout=60, check=False)
        run(["docker", "rmi", image], timeout=120, check=False)


def image_size(image: str) -> str:
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", image], timeout=60).stdout)
    return f"{size / 1e6:.0f} MB"
