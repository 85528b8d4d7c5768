"""The demo's view of its lifecycle through Airflow's REST API (v2): the few calls it needs, and the
waits for a month's asset chain and for the month's scoring by the champion the chain left."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from streamflow_mlops.platform.processes import Processes

AIRFLOW_USER = "admin"
LIFECYCLE_DAGS = ("streamflow_ingest", "streamflow_features", "streamflow_drift", "streamflow_train")
SCORE_DAG = "streamflow_score"
FINISHED = {"success", "failed"}
POLL_S = 2.0
READ_TRIES = 3


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class AirflowAPI:
    """The few calls of Airflow's REST API (v2) the demo needs."""

    def __init__(self, base_url: str, password: str, timeout: float = 30):
        self.base = base_url.rstrip("/")
        self.password = password
        self._client = httpx.Client(base_url=self.base, timeout=timeout)

    def login(self) -> None:
        answer = self._client.post("/auth/token", json={"username": AIRFLOW_USER, "password": self.password})
        answer.raise_for_status()
        self._client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def has_dag(self, dag_id: str) -> bool:
        return self._client.get(f"/api/v2/dags/{dag_id}").status_code == 200

    def _read(self, path: str, params: dict | None = None) -> dict:
        """GET, asked again after a timeout: reads are idempotent, and on a busy 2-core machine the
        api-server can take longer than the client's timeout to answer one poll."""
        for _ in range(READ_TRIES - 1):
            try:
                return self._get_json(path, params)
            except httpx.TimeoutException:
                say(f"  Airflow's API did not answer {path} in time (a busy machine?); asking again")
        return self._get_json(path, params)

    def _get_json(self, path: str, params: dict | None) -> dict:
        answer = self._client.get(path, params=params)
        answer.raise_for_status()
        return answer.json()

    def trigger(self, dag_id: str, conf: dict) -> str:
        answer = self._client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        answer.raise_for_status()
        return answer.json()["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        params = {"order_by": "-run_after", "limit": 50}
        return self._read(f"/api/v2/dags/{dag_id}/dagRuns", params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """The run's task instances by task id (state, try_number, hostname, start_date...)."""
        answer = self._read(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in answer["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {task_id: ti["state"] for task_id, ti in self.task_instances(dag_id, run_id).items()}


def wait_for_chain(
    api: AirflowAPI, month: str, since: set[str], timeout: float, processes: Processes, poll: float = POLL_S
) -> dict:
    """Wait until the asset chain started by one ingest settles; returns the runs it made.

    The chain is ingest -> features -> drift, then train only if the drift gate requested it
    (asset `streamflow_retrain_request`). `timeout` bounds a wait with no progress: each change of
    a run's state starts it again, so a slow (busy) machine is waited for and a stuck chain is not.
    """
    deadline = time.monotonic() + timeout
    seen: dict[str, dict] = {}
    while time.monotonic() < deadline:
        processes.check()
        for dag_id in LIFECYCLE_DAGS:
            new = [r for r in api.runs(dag_id) if r["dag_run_id"] not in since]
            if new:
                latest = new[0]
                if seen.get(dag_id, {}).get("state") != latest["state"]:
                    say(f"  {dag_id}: {latest['state']}")
                    deadline = time.monotonic() + timeout
                seen[dag_id] = latest
        states = {dag_id: run["state"] for dag_id, run in seen.items()}
        failed = [d for d, s in states.items() if s == "failed"]
        if failed:
            raise RuntimeError(f"{month}: {', '.join(failed)} failed; see the Airflow UI or .streamflow/airflow/logs")
        if states.get("streamflow_drift") == "success":
            drift = seen["streamflow_drift"]
            gate = api.task_states("streamflow_drift", drift["dag_run_id"])
            if gate.get("request_retrain") == "skipped" or states.get("streamflow_train") == "success":
                return seen
        time.sleep(poll)
    raise TimeoutError(f"{month}: the lifecycle made no progress for {timeout:.0f}s")


def scores_settled(score_runs: list[dict], champion: str | None, scored_by: str | None) -> bool:
    """Whether a month's scores are final: every scoring run since its ingest has finished and the
    month is scored by the current champion (or there is no champion to score with yet).

    Raises when a scoring run failed.
    """
    failed = [run["dag_run_id"] for run in score_runs if run["state"] == "failed"]
    if failed:
        raise RuntimeError(f"{SCORE_DAG} failed ({', '.join(failed)}); see the Airflow UI or .streamflow/airflow/logs")
    return all(run["state"] in FINISHED for run in score_runs) and (champion is None or scored_by == champion)


def wait_for_scores(
    api: AirflowAPI,
    month: str,
    since: set[str],
    timeout: float,
    processes: Processes,
    champion_and_scorer: Callable[[], tuple[str | None, str | None]],
    poll: float = POLL_S,
) -> list[dict]:
    """Wait until `month` is scored by the champion the chain left; returns the scoring runs since `since`.

    The chain settling is not enough: a new champion's scoring run is created only after
    `streamflow_train` has finished, and until it has run the month's scores are the old champion's.
    `champion_and_scorer()` gives the champion's version and the version that scored the month.
    `timeout` bounds a wait with no progress, as in `wait_for_chain`.
    """
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while True:
        processes.check()
        runs = [run for run in api.runs(SCORE_DAG) if run["dag_run_id"] not in since]
        for run in runs:
            if states.get(run["dag_run_id"]) != run["state"]:
                say(f"  {SCORE_DAG} {run['dag_run_id']}: {run['state']}")
                states[run["dag_run_id"]] = run["state"]
                deadline = time.monotonic() + timeout
        champion, scored_by = champion_and_scorer()
        if scores_settled(runs, champion, scored_by):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{month}: not scored by champion v{champion}, no progress for {timeout:.0f}s (its scores are by "
                f"{'nobody' if scored_by is None else f'v{scored_by}'}); see {SCORE_DAG} in the Airflow UI"
            )
        time.sleep(poll)
