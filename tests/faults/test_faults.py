"""Faults survived: parts of the running compose stack killed mid-work, the outcome asserted.

One stack, CeleryExecutor with two workers (`--profile celery`, `--scale airflow-worker=2`). Its
first month (month_000) runs with a Celery worker killed twice on the way: during the training
task (fault 7), then during `promote`, once the challenger is registered and before the alias
moves (fault 2). Its champion then serves, and the serving faults follow one another, each
starting from a healthy stack, under load from `tests/faults/load.py`. Each prints its figures
(requests failed, rows lost, seconds to recover, tries) and the moment it landed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest

from streamflow_mlops.data.ingest import LOAD_LOCK_KEY
from streamflow_mlops.platform.lifecycle import AirflowAPI, wait_for_chain
from streamflow_mlops.serving.scoring import REQUEST_TIMEOUT_S
from tests.compose.conftest import managed_stack
from tests.compose.stack import (
    LIFECYCLE_DAGS,
    ComposeStack,
    csv_rows,
    ready,
    run,
    wait_for_run,
    wait_until,
    warehouse_fingerprint,
)
from tests.faults.load import PredictLoad, in_flight, say, tally

# Load before a fault, so the log shows it landing on a service answering 200s.
WARMUP_S = 5.0
# How long the online store stays down: a few of the service's feature-store polls.
REDIS_OUTAGE_S = 15.0
# Postgres stopped for 10 s under /predict load.
POSTGRES_OUTAGE_S = 10.0
# A month big enough that its load (one transaction, ~6 s here) can be hit half-way;
# month_001 stays the stack's ordinary next month.
BIG_MONTH, BIG_MONTH_START, BIG_MONTH_AS_OF, BIG_MONTH_USERS = "month_002", "2", "2024-03-31", 200_000
# An answer may take the service's own request timeout, plus a loaded 2-core machine's slack; never more.
LATEST_ANSWER_S = REQUEST_TIMEOUT_S + 5
WORKER = "airflow-worker"
# Two Celery workers: a task of a killed one is retried on the other (or on it, restarted).
WORKERS = 2
# Training must have been under way this long, and registered nothing yet, when its worker is killed.
TRAINING_FOR_S = 3.0
# The scheduler looks for tasks without a heartbeat every 10 s
# ([scheduler] task_instance_heartbeat_timeout_detection_interval); slack for a loaded machine.
DETECTION_SLACK_S = 10 + 20
# A dead worker's task is retried within 3 min of its death: the heartbeat timeout, the check, the
# 30 s retry delay (Airflow's default timeout alone, 300 s, left it `running` for 5 min).
RETRIED_WITHIN_S = 180


@pytest.fixture(scope="module")
def stack(request, engine, timings):
    def setup(stack: ComposeStack) -> None:
        stack.generate_drops(["--months", "2"])
        stack.build(timings)
        with timings.phase("faults: up -d --build --wait"):
            stack.up()

    yield from managed_stack(request, timings, ComposeStack("faults", celery=True, workers=WORKERS), setup)


@pytest.fixture(scope="module")
def api(stack) -> AirflowAPI:
    return stack.airflow_api()


@pytest.fixture(scope="module")
def month_000(stack, api, timings) -> dict:
    """month_000 through the lifecycle, a Celery worker killed twice in its `streamflow_train` run:
    during `train_challenger` (fault 7), then during `promote` (fault 2). What each kill hit and
    how the chain ended, for the two tests below; a kill that missed its window is None there."""
    before = {run["dag_run_id"] for dag_id in LIFECYCLE_DAGS for run in api.runs(dag_id)}
    with timings.phase("faults: month_000 with a Celery worker killed in training, then in promote"):
        api.trigger("streamflow_ingest", {"month": "month_000"})
        train_run = wait_until_value(
            "month_000's streamflow_train run", lambda: new_train_run(api, before), 1200, every=1
        )
        say(f"streamflow_train {train_run} started")
        killed = {
            "training": kill_in_window(
                stack, api, train_run, "train_challenger", lambda tis, registry: training_window(tis, registry)
            ),
            "promote": kill_in_window(
                stack, api, train_run, "promote", lambda tis, registry: promote_window(tis, registry)
            ),
        }
        runs = wait_for_chain(api, "month_000", before, timeout=1200, processes=WorkersUnderAttack(stack))
    return {"killed": killed, "runs": runs, "train_run": train_run, "ended": time.time()}


@pytest.fixture(scope="module")
def champion(stack, month_000) -> str:
    """month_000's champion: the one every serving fault runs against."""
    assert month_000["runs"]["streamflow_train"]["state"] == "success"
    wait_until("churn-service /readyz with the first champion", lambda: ready(stack.service_url), 180)
    return stack.champion()["version"]


class WorkersUnderAttack:
    """`processes` for wait_for_chain: every service running, but the Celery workers being killed."""

    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack

    def check(self) -> None:
        self.stack.check(skip=(WORKER,))


def wait_until_value(what: str, value: Callable[[], object], timeout: float, every: float = 1.0):
    found = []

    def done() -> bool:
        found[:] = [value()]
        return found[0] is not None

    wait_until(what, done, timeout, every)
    return found[0]


def new_train_run(api: AirflowAPI, before: set[str]) -> str | None:
    """The chain's streamflow_train run once it exists; raises when a run of the chain failed first."""
    for dag_id in LIFECYCLE_DAGS:
        failed = [r for r in api.runs(dag_id) if r["dag_run_id"] not in before and r["state"] == "failed"]
        assert not failed, f"{dag_id} failed before training: {failed}"
    new = [r["dag_run_id"] for r in api.runs("streamflow_train") if r["dag_run_id"] not in before]
    return new[0] if new else None


def registry_state(stack: ComposeStack) -> dict:
    """`versions`: every version of streamflow_churn with its tags; `aliases`: alias -> version."""
    answer = httpx.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/model-versions/search",
        params={"filter": "name='streamflow_churn'"},
        timeout=30,
    )
    answer.raise_for_status()
    versions = {
        v["version"]: {tag["key"]: tag["value"] for tag in v.get("tags", [])}
        for v in answer.json().get("model_versions", [])
    }
    model = httpx.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/registered-models/get", params={"name": "streamflow_churn"}, timeout=30
    )
    if model.status_code == 404 or "RESOURCE_DOES_NOT_EXIST" in model.text:
        return {"versions": versions, "aliases": {}}
    model.raise_for_status()
    aliases = {a["alias"]: a["version"] for a in model.json()["registered_model"].get("aliases", [])}
    return {"versions": versions, "aliases": aliases}


def seconds_since(moment: str | None) -> float:
    """Seconds from an Airflow/MLflow ISO timestamp to now (this machine's clock, as the containers')."""
    return time.time() - timestamp(moment) if moment else 0.0


def timestamp(moment: str) -> float:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


def training_window(tis: dict[str, dict], registry: dict) -> bool | None:
    """Fault 7's moment: train_challenger running for a few seconds, no version registered yet.
    None once it is past (training registered or ended)."""
    ti = tis.get("train_challenger", {})
    if registry["versions"] or ti.get("state") in ("success", "failed", "up_for_retry"):
        return None
    running = ti.get("state") == "running" and ti.get("try_number") == 1
    return running and seconds_since(ti["start_date"]) >= TRAINING_FOR_S


def promote_window(tis: dict[str, dict], registry: dict) -> bool | None:
    """Fault 2's moment: the challenger registered, `promote` running, the alias not moved yet.
    None once it is past (the alias moved or promote ended)."""
    ti = tis.get("promote", {})
    if "champion" in registry["aliases"] or ti.get("state") in ("success", "failed", "skipped", "up_for_retry"):
        return None
    return bool(registry["versions"]) and ti.get("state") == "running" and ti.get("try_number") == 1


def kill_in_window(
    stack: ComposeStack, api: AirflowAPI, run_id: str, task_id: str, window: Callable[[dict, dict], bool | None]
) -> dict | None:
    """Poll Airflow and MLflow until `window` opens, then SIGKILL (from the host, as the OOM killer
    would) the main process of the Celery worker container running `task_id`; what the kill hit,
    or None when the window passed unseen. The container's `restart: always` brings it back."""
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        tis = api.task_instances("streamflow_train", run_id)
        registry = registry_state(stack)
        opened = window(tis, registry)
        if opened is None:
            say(f"the window for killing {task_id}'s worker passed unseen: {task_states(tis)}, {registry}")
            return None
        if opened:
            ti = tis[task_id]
            workers = {c["Config"]["Hostname"]: c for c in stack.inspect_all(WORKER)}
            worker = workers[ti["hostname"]]
            os.kill(worker["State"]["Pid"], signal.SIGKILL)
            killed = time.time()
            hit = {
                "task": task_id,
                "try": ti["try_number"],
                "worker": ti["hostname"],
                "running s": round(killed - timestamp(ti["start_date"]), 1),
                "at": killed,
                "states": task_states(tis),
                "registry": registry,
            }
            say(f"Celery worker {ti['hostname']} SIGKILLed while {task_id} try {ti['try_number']} was running "
                f"({hit['running s']}s in); tasks {hit['states']}; registered versions (decision tag) "
                f"{ {v: t.get('decision') for v, t in registry['versions'].items()} }; "
                f"aliases {registry['aliases']}")  # fmt: skip
            return hit
        time.sleep(0.25)
    raise TimeoutError(f"{task_id}: no window within 1200s")


def task_states(tis: dict[str, dict]) -> dict[str, str | None]:
    return {task_id: ti["state"] for task_id, ti in tis.items()}


def tries(stack: ComposeStack, run_id: str, task_id: str) -> list[dict]:
    path = f"/api/v2/dags/streamflow_train/dagRuns/{run_id}/taskInstances/{task_id}/tries"
    return sorted(stack.airflow_get(path)["task_instances"], key=lambda ti: ti["try_number"])


def heartbeat_timeout_s(stack: ComposeStack) -> float:
    """[scheduler] task_instance_heartbeat_timeout as the stack's scheduler has it (300: Airflow's default)."""
    config = json.loads(stack.compose("config", "--format", "json").stdout)
    environment = config["services"]["airflow-scheduler"].get("environment", {})
    return float(environment.get("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", 300))


def recovery_figures(stack: ComposeStack, run_id: str, hit: dict) -> tuple[list[dict], dict]:
    """The killed task's tries and the figures of its recovery: when the scheduler failed the dead
    try (its end), when the next try started, where it ran and how long it took."""
    attempts = tries(stack, run_id, hit["task"])
    dead, retry = attempts[0], attempts[-1]
    figures = {
        "killed after s": hit["running s"],
        "tries": [f"{t['try_number']} {t['state']} on {t['hostname']}" for t in attempts],
        "dead try failed after s": dead["end_date"] and round(timestamp(dead["end_date"]) - hit["at"], 1),
        "retry started after s": retry["start_date"] and round(timestamp(retry["start_date"]) - hit["at"], 1),
        "retry ran s": retry["end_date"] and round(timestamp(retry["end_date"]) - timestamp(retry["start_date"]), 1),
        "retry on": "the other worker" if retry["hostname"] != hit["worker"] else "the killed worker, restarted",
    }
    return attempts, figures


def test_celery_worker_killed_mid_task_the_task_is_retried_and_the_chain_completes(stack, month_000, timings):
    """Fault 7: the worker running train_challenger SIGKILLed mid-training (nothing registered yet):
    the scheduler fails the dead try after the heartbeat timeout, the retry trains on a worker
    (the other, or this one restarted), and month_000's chain completes."""
    hit = month_000["killed"]["training"]
    assert hit is not None, "the kill missed train_challenger's run (it registered before the poll saw it running)"
    assert hit["states"]["train_challenger"] == "running" and not hit["registry"]["versions"]
    attempts, figures = recovery_figures(stack, month_000["train_run"], hit)
    timeout_s = heartbeat_timeout_s(stack)
    figures |= {
        "heartbeat timeout s": timeout_s,
        "worker restarts": {c["Config"]["Hostname"]: c["RestartCount"] for c in stack.inspect_all(WORKER)},
        "chain": {dag_id: run["state"] for dag_id, run in month_000["runs"].items()},
        "chain done after kill s": round(month_000["ended"] - hit["at"]),
    }
    report("celery worker killed mid-task (train_challenger)", figures)
    assert len(attempts) == 2 and attempts[-1]["state"] == "success", attempts
    assert all(run["state"] == "success" for run in month_000["runs"].values()), month_000["runs"]
    # Noticed within the heartbeat timeout and the scheduler's check, not Airflow's default 5 min.
    failed_after = figures["dead try failed after s"]
    assert failed_after is not None and failed_after <= timeout_s + DETECTION_SLACK_S, figures
    assert figures["retry started after s"] <= RETRIED_WITHIN_S, figures


def test_train_process_killed_between_registration_and_alias_move_leaves_one_champion(stack, month_000, timings):
    """Fault 2: the worker running `promote` SIGKILLed after the challenger was registered and before
    the alias moved: the retry completes the promotion; one version carries the alias, its tags
    say so, and no other version of month_000 is promoted."""
    hit = month_000["killed"]["promote"]
    assert hit is not None, "the kill missed promote's window (the alias moved before the poll saw promote running)"
    challenger = max(hit["registry"]["versions"], key=int)
    assert hit["states"]["promote"] == "running" and "champion" not in hit["registry"]["aliases"]
    attempts, figures = recovery_figures(stack, month_000["train_run"], hit)
    after = registry_state(stack)
    versions, champion = after["versions"], after["aliases"].get("champion")
    month_versions = {v: t for v, t in versions.items() if t.get("month") == "month_000"}
    promoted = [v for v, t in month_versions.items() if t.get("decision") == "promoted"]
    moved = versions.get(champion, {}).get("champion_since")
    figures |= {
        "challenger at the kill": f"v{challenger} decision={hit['registry']['versions'][challenger].get('decision')}",
        "alias moved after s": moved and round(timestamp(moved) - hit["at"], 1),
        "champion": champion,
        "month_000 versions": {v: t.get("decision") for v, t in month_versions.items()},
        "train run": month_000["runs"]["streamflow_train"]["state"],
    }
    report("train process killed between registration and the alias move", figures)
    assert month_000["runs"]["streamflow_train"]["state"] == "success"
    assert len(attempts) == 2 and attempts[-1]["state"] == "success", attempts
    assert figures["retry started after s"] <= RETRIED_WITHIN_S, figures
    assert champion == challenger and promoted == [champion], (champion, month_versions)
    tags = versions[champion]
    assert tags["champion_since"] and not tags.get("replaced_by") and tags["previous_champion"] == ""
    # Every other promoted version (none on this fresh stack) says what replaced it.
    standing = [v for v, t in versions.items() if t.get("decision") == "promoted" and not t.get("replaced_by")]
    assert standing == [champion], versions


@pytest.fixture(scope="module")
def users(stack) -> list[str]:
    return list(csv_rows(stack.drops / "month_000" / "users.csv"))


@pytest.fixture
def healthy(stack) -> None:
    """Each fault starts from a stack whose every service is up and healthy again (a fault that
    failed half-way may have left its service stopped)."""
    for service in stack.services:
        if any(c["State"]["Status"] != "running" for c in stack.inspect_all(service)):
            say(f"{service} was left down: starting it")
            stack.compose("start", service)
    seconds = stack.wait_healthy()
    # The service's health check is /healthz (alive); serving faults need it able to predict.
    seconds += wait_until("churn-service /readyz", lambda: ready(stack.service_url), 300)
    say(f"stack healthy and serving ({seconds:.0f}s wait); restarts so far: {restart_counts(stack)}")


def restart_counts(stack: ComposeStack) -> dict[str, int]:
    return {service: sum(c["RestartCount"] for c in stack.inspect_all(service)) for service in stack.services}


def report(title: str, figures: dict[str, object]) -> None:
    say(f"{title}: " + ", ".join(f"{name} {value}" for name, value in figures.items()))


def log_metric(url: str, name: str) -> int:
    """A prediction-log counter of /metrics, summed over the service's workers."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(int(float(value)) for value in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE))


def logged_predictions(stack: ComposeStack) -> int:
    return int(stack.psql("SELECT count(*) FROM streamflow.prediction_log"))


def settled_log_count(stack: ComposeStack) -> int:
    """prediction_log's row count once the service's background writer has nothing left to write."""
    counts = [logged_predictions(stack)]

    def unchanged() -> bool:
        counts.append(logged_predictions(stack))
        return counts[-1] == counts[-2]

    wait_until("prediction_log settled", unchanged, 60, every=3)
    return counts[-1]


def service_outage(
    stack: ComposeStack, load: PredictLoad, service: str, seconds: float, while_down: Callable[[], float] = lambda: 0.0
) -> tuple[float, float, float]:
    """After the load's warm-up, `service` stopped for `seconds`, then started again; returns when it
    was down and when its start was asked (time.time()), and what `while_down()`, run meanwhile, said."""
    time.sleep(WARMUP_S)
    stopping = time.time()
    stack.compose("stop", service)
    stopped = time.time()
    say(f"{service} stopped ({stopped - stopping:.1f}s); {len(load.between(0, stopping))} calls before it, "
        f"{len(in_flight(load.snapshot(), stopping))} in flight")  # fmt: skip
    measured = while_down()
    time.sleep(max(0.0, seconds - (time.time() - stopped)))
    restarting = time.time()
    stack.compose("start", service)
    say(f"{service} started again; outage calls: {tally(load.between(stopped, restarting))}")
    return stopped, restarting, measured


def test_redis_stopped_under_load_answers_503_and_recovers_without_a_restart(stack, champion, users, healthy, timings):
    """The online store down: 503 feature_store_unavailable, never a 500 or a hang;
    /readyz false; 200 again once Redis is back, same container."""
    service = stack.inspect("churn-service")
    with timings.phase("faults: redis stopped under /predict load"), PredictLoad(stack.service_url, users) as load:
        stopped, restarting, not_ready_s = service_outage(
            stack,
            load,
            "redis",
            REDIS_OUTAGE_S,
            lambda: wait_until("/readyz false while redis is down", lambda: not ready(stack.service_url), 60),
        )
        restarted = time.time()
        wait_until("a 200 after redis is back", lambda: load.first_success_after(restarted) is not None, 120, 0.2)
        ready_s = wait_until("/readyz true after redis is back", lambda: ready(stack.service_url), 120, 0.5)
        ready_at = time.time()
        time.sleep(2)
    answers = load.snapshot()
    # Calls answered while Redis was down (one started just before the restart may be answered
    # from the restarted Redis).
    outage = [a for a in load.between(stopped) if a.ended < restarting]
    first_200 = load.first_success_after(restarted)
    figures = {
        "calls": len(answers),
        "outcomes": tally(answers),
        "during outage": tally(outage),
        "slowest answer s": round(max(a.seconds for a in answers), 2),
        "readyz false after s": round(not_ready_s, 1),
        "first 200 after restart s": round(first_200.ended - restarted, 1),
        "readyz true after restart s": round(ready_s, 1),
    }
    report("redis stopped", figures)
    assert outage and {(a.status, a.error) for a in outage} == {(503, "feature_store_unavailable")}, tally(outage)
    assert {a.status for a in answers} <= {200, 503}, tally(answers)
    assert max(a.seconds for a in answers) <= LATEST_ANSWER_S
    after = stack.inspect("churn-service")
    assert (
        after["RestartCount"] == service["RestartCount"]
        and after["State"]["StartedAt"] == service["State"]["StartedAt"]
    )
    assert {a.status for a in load.between(ready_at)} == {200}


def test_churn_service_killed_under_load_is_restarted_and_serves_the_champion(stack, champion, users, healthy, timings):
    """The service container's main process SIGKILLed: the restart policy brings it
    back, it turns ready on its own and serves the current champion; the gap is reported."""
    before = stack.inspect("churn-service")
    with (
        timings.phase("faults: churn-service killed under /predict load"),
        PredictLoad(stack.service_url, users) as load,
    ):
        time.sleep(WARMUP_S)
        # From the host, as the kernel's OOM killer or a crash would: Docker's restart policy
        # deliberately leaves a container stopped by `docker kill` (an operator's act) alone.
        os.kill(before["State"]["Pid"], signal.SIGKILL)
        killed = time.time()
        say(f"churn-service's main process (bentoml serve) SIGKILLed; {len(load.between(0, killed))} calls before it, "
            f"{len(in_flight(load.snapshot(), killed))} in flight")  # fmt: skip

        def restarted() -> bool:
            after = stack.inspect("churn-service")
            return after["RestartCount"] > before["RestartCount"] and after["State"]["Status"] == "running"

        restarted_s = wait_until("the restart policy restarting churn-service", restarted, 120, 0.5)
        say(f"churn-service container running again after {restarted_s:.1f}s")
        # A call or two may still be answered by workers the kernel has not reaped yet: the gap
        # starts at the first failed call.
        wait_until("a failed call after the kill", lambda: load.first_failure_after(killed) is not None, 60, 0.2)
        down = load.first_failure_after(killed).started
        wait_until("a 200 after the kill", lambda: load.first_success_after(down) is not None, 600, 0.5)
        wait_until("churn-service /readyz after the kill", lambda: ready(stack.service_url), 120, 0.5)
        time.sleep(2)
    answers = load.snapshot()
    last_200 = max((a.ended for a in answers if a.status == 200 and a.started < down), default=killed)
    first_200 = load.first_success_after(down)
    gap = [a for a in answers if a.started >= killed and a.ended <= first_200.ended and a.status != 200]
    figures = {
        "calls": len(answers),
        "outcomes": tally(answers),
        "failed in the gap": len(gap),
        "container running after s": round(restarted_s, 1),
        "gap between 200s s": round(first_200.ended - last_200, 1),
        "served after": sorted({a.version for a in answers if a.started > first_200.started and a.status == 200}),
    }
    report("churn-service killed", figures)
    assert {a.status for a in answers} <= {200, 503, None}, tally(answers)
    assert {a.version for a in answers if a.status == 200} == {stack.champion()["version"]}
    assert ready(stack.service_url)


def test_postgres_stopped_10s_under_load_keeps_serving_and_logs_every_prediction(
    stack, champion, users, healthy, timings
):
    """Postgres down for 10 s: predictions go on (features come from Redis) and every
    prediction made meanwhile reaches prediction_log afterwards, or the dropped-rows metric counts it."""
    logged_before = settled_log_count(stack)
    dropped_before = log_metric(stack.service_url, "streamflow_prediction_log_dropped_rows_total")
    with (
        timings.phase("faults: postgres stopped 10 s under /predict load"),
        PredictLoad(stack.service_url, users) as load,
    ):
        stopped, restarting, _ = service_outage(stack, load, "postgres", POSTGRES_OUTAGE_S)
        wait_until("postgres accepting connections", lambda: pg_ready(stack), 120, 0.5)
        time.sleep(3)
    answers = load.snapshot()
    outage = load.between(stopped, restarting)
    served = sum(a.status == 200 for a in answers)
    dropped = log_metric(stack.service_url, "streamflow_prediction_log_dropped_rows_total") - dropped_before
    expected = logged_before + served - dropped
    counts = {}

    def all_logged() -> bool:
        counts["now"] = logged_predictions(stack)
        return counts["now"] >= expected

    try:
        logged_s: float | None = wait_until("every served prediction in prediction_log", all_logged, 120, 1)
    except TimeoutError:
        logged_s = None  # the figures below say how many are missing
    in_window = int(
        stack.psql(
            "SELECT count(*) FROM streamflow.prediction_log "
            f"WHERE predicted_at >= to_timestamp({stopped}) AND predicted_at < to_timestamp({restarting})"
        )
    )
    figures = {
        "calls": len(answers),
        "outcomes": tally(answers),
        "during outage": tally(outage),
        "served": served,
        "rows logged": counts["now"] - logged_before,
        "rows dropped (metric)": dropped,
        "rows logged for the outage's predictions": in_window,
        "all logged after restart s": logged_s and round(logged_s, 1),
    }
    report("postgres stopped 10 s", figures)
    assert outage and {a.status for a in outage} == {200}, tally(outage)
    assert {a.status for a in answers} == {200}, tally(answers)
    assert counts["now"] - logged_before == served - dropped


def pg_ready(stack: ComposeStack) -> bool:
    user = stack.env["POSTGRES_USER"]
    return (
        stack.compose("exec", "-T", "postgres", "pg_isready", "-U", user, "-d", "streamflow", check=False).returncode
        == 0
    )


def test_postgres_killed_mid_load_leaves_the_warehouse_as_before(stack, api, champion, healthy, timings):
    """SIGKILL of Postgres while a 200,000-user month is being copied in: after the
    restart the warehouse is exactly as before the load, ingestion_runs says what happened, and
    the month then loads completely, once."""
    with timings.phase(f"faults: generate {BIG_MONTH} ({BIG_MONTH_USERS:,} users)"):
        stack.generate_drops(["--start", BIG_MONTH_START, "--months", "1", "--users", str(BIG_MONTH_USERS)])
    # The load is under attack, not what follows it: the month through features, drift and
    # training would take the rest of the suite's time.
    stack.airflow_request("PATCH", "/api/v2/dags/streamflow_features", json={"is_paused": True})
    before = warehouse_fingerprint(stack)
    loading: dict[str, object] = {}

    def load_under_way() -> bool:
        """The load's transaction holds its advisory lock (data/ingest.py) and has been writing
        for a second; what its COPY has reached, if one is running, goes in the log."""
        row = stack.psql(
            "SELECT round(extract(epoch FROM now() - a.xact_start)::numeric, 1), "
            "coalesce(p.relid::regclass::text, ''), coalesce(p.tuples_processed, 0) "
            "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "LEFT JOIN pg_stat_progress_copy p USING (pid) "
            f"WHERE l.locktype = 'advisory' AND l.objid = {LOAD_LOCK_KEY} AND l.granted"
        )
        if not row:
            return False
        seconds, table, rows = row.split("|")
        loading.update({"transaction open s": float(seconds), "copying into": table or "-", "rows copied": int(rows)})
        return float(seconds) >= 1.0

    with timings.phase(f"faults: postgres killed mid-load of {BIG_MONTH}"):
        run_id = api.trigger("streamflow_ingest", {"month": BIG_MONTH})
        wait_until(f"{BIG_MONTH}'s load writing into the warehouse", load_under_way, 900, every=0.2)
        run(["docker", "kill", stack.container("postgres")], timeout=60)
        killed = time.time()
        say(f"postgres SIGKILLed in the middle of the load: {loading}")
        # `docker kill` is an operator's stop: Docker's restart policy leaves it down, so start it.
        stack.compose("start", "postgres")
        back_s = wait_until("postgres accepting connections again", lambda: pg_ready(stack), 300, 0.5)
        after = warehouse_fingerprint(stack)
        say(f"postgres accepting connections {back_s:.1f}s after the kill; warehouse compared")
    assert after == before, {table: (before.get(table), after.get(table)) for table in before.keys() | after.keys()}
    with timings.phase(f"faults: {BIG_MONTH} loaded after the kill (task retry or re-trigger)"):
        stack.wait_healthy()
        state = wait_for_run(api, "streamflow_ingest", run_id, timeout=900)
        say(f"the interrupted ingest run ended {state}")
        if state != "success":
            assert wait_for_run(api, "streamflow_ingest", api.trigger("streamflow_ingest", {"month": BIG_MONTH})) == (
                "success"
            )
        again = api.trigger("streamflow_ingest", {"month": BIG_MONTH})
        assert wait_for_run(api, "streamflow_ingest", again) == "success"
    attempts = stack.psql(
        "SELECT status, row_counts->>'users', "
        "left(regexp_replace(coalesce(failed_expectations->0->>'detail', ''), '\\s+', ' ', 'g'), 120) "
        f"FROM streamflow.ingestion_runs WHERE month = '{BIG_MONTH}' ORDER BY run_id"
    ).splitlines()
    users_loaded = int(stack.psql(f"SELECT count(*) FROM streamflow.users WHERE as_of = '{BIG_MONTH_AS_OF}'"))
    figures = {
        "killed mid-load": loading,
        "postgres back after s": round(back_s, 1),
        "ingestion_runs": attempts,
        "users loaded": users_loaded,
        "ended at": round(time.time() - killed),
    }
    report("postgres killed mid-load", figures)
    statuses = [attempt.split("|")[0] for attempt in attempts]
    # The killed attempt, recorded once the database was back; the load that completed; the
    # re-trigger finding the month already loaded.
    assert statuses == ["failed", "success", "unchanged"], attempts
    assert attempts[0].split("|")[2], f"the failed attempt names no reason: {attempts}"
    assert users_loaded == BIG_MONTH_USERS


def test_mlflow_down_for_a_train_run_fails_clearly_and_a_rerun_after_it_decides(stack, api, champion, healthy, timings):
    """MLflow down for a whole streamflow_train run: the run fails after its retries
    with a clear reason and promotes nothing; once MLflow is back a re-run decides normally."""
    versions_before = registered_versions(stack)
    with timings.phase("faults: streamflow_train with mlflow down"):
        stack.compose("stop", "mlflow")
        stopped = time.time()
        run_id = api.trigger("streamflow_train", {"month": "month_000", "seed": 7})
        say(f"mlflow stopped; streamflow_train {run_id} triggered")
        state = wait_for_run(api, "streamflow_train", run_id, timeout=1200)
        failed_after = time.time() - stopped
        tries = stack.airflow_get(f"/api/v2/dags/streamflow_train/dagRuns/{run_id}/taskInstances")["task_instances"]
        failed = next(ti for ti in tries if ti["state"] == "failed")
        log = stack.airflow_get(
            f"/api/v2/dags/streamflow_train/dagRuns/{run_id}/taskInstances/{failed['task_id']}/logs/{failed['try_number']}"
        )
        reason = last_error(log)
        say(f"streamflow_train ended {state} after {failed_after:.0f}s: {reason}")
        stack.compose("start", "mlflow")
        stack.wait_healthy()
    assert state == "failed"
    assert stack.champion()["version"] == champion and registered_versions(stack) == versions_before
    with timings.phase("faults: streamflow_train re-run with mlflow back"):
        rerun = api.trigger("streamflow_train", {"month": "month_000", "seed": 7})
        assert wait_for_run(api, "streamflow_train", rerun, timeout=1200) == "success"
    new_versions = registered_versions(stack) - versions_before
    after = stack.champion()
    figures = {
        "failed after s": round(failed_after),
        "failed task": f"{failed['task_id']} try {failed['try_number']}",
        "reason": reason,
        "versions registered by the re-run": sorted(new_versions),
        "champion": f"{champion} -> {after['version']}",
    }
    report("mlflow down for a train run", figures)
    assert failed["try_number"] == 2 and "mlflow" in reason.lower()
    assert len(new_versions) == 1 and after["version"] in new_versions | {champion}


def registered_versions(stack: ComposeStack) -> set[str]:
    answer = httpx.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/model-versions/search",
        params={"filter": "name='streamflow_churn'"},
        timeout=30,
    )
    answer.raise_for_status()
    return {version["version"] for version in answer.json().get("model_versions", [])}


def last_error(log: dict) -> str:
    """The error an Airflow task log ends with: its structured `error_detail` (the exception chain,
    joined), else its last `...Error: ...` or `...Exception: ...` line."""
    content = log["content"]
    text = content if isinstance(content, str) else json.dumps(content)
    chain = re.findall(r'"exc_value": "([^"]{1,300})', text)
    if chain:
        return " <- ".join(chain)[:600]
    lines = re.findall(r"(\w+(?:Error|Exception): [^\n\"]{1,300})", text)
    return lines[-1] if lines else text[-300:]
