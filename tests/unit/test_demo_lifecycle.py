"""How `make demo` waits for a month's lifecycle: its summary must not show a month scored by the
champion the month replaced (month_001 "by model v1" while v2 is the champion)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streamflow_mlops.platform.demo import Stack
from streamflow_mlops.platform.lifecycle import LIFECYCLE_DAGS, SCORE_DAG, AirflowAPI, scores_settled, wait_for_scores
from streamflow_mlops.platform.processes import Processes
from tests.conftest import offline_settings


def run(run_id: str, state: str) -> dict:
    return {"dag_run_id": run_id, "state": state}


class Month001:
    """Airflow and the warehouse once month_001's ingest is triggered: drift, train (v2 promoted) and
    the published month's scoring run (by v1) are done at the first poll; the scoring run the new
    champion triggers appears only at the third poll, queued, runs for two and scores with v2."""

    champion = "2"
    CHAMPION_RUN = {3: "queued", 4: "running", 5: "running"}

    def __init__(self, loaded: bool = False) -> None:
        self.triggered = False
        self.score_polls = 0
        self.loaded = loaded  # by an earlier demo run, stopped before its chain finished
        self.conf: dict = {}

    def trigger(self, dag_id: str, conf: dict) -> str:
        self.triggered = True
        self.conf = conf
        return "manual__month_001"

    def runs(self, dag_id: str) -> list[dict]:
        if not self.triggered:
            return []
        if dag_id != SCORE_DAG:
            return [run(f"{dag_id}__month_001", "success")]
        self.score_polls += 1
        new_champion = [run(f"{SCORE_DAG}__v2", state) for state in self.champion_run_states()]
        return [*new_champion, run(f"{SCORE_DAG}__features", "success")]

    def champion_run_states(self) -> list[str]:
        """The new champion's scoring run as the latest poll saw it: none for the first two polls."""
        return [] if self.score_polls <= 2 else [self.CHAMPION_RUN.get(self.score_polls, "success")]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {"request_retrain": "success"}

    def champion_and_scorer(self) -> tuple[str, str]:
        return self.champion, "2" if self.champion_run_states() == ["success"] else "1"


def stack_over(airflow: Month001, tmp_path) -> Stack:
    settings = offline_settings(tmp_path)
    stack = Stack(settings)
    stack.api = airflow
    stack.processes = Processes(tmp_path / "logs", {})
    stack.champion_and_scorer = lambda month: airflow.champion_and_scorer()
    stack.month_loaded = lambda month: airflow.loaded
    return stack


def test_a_month_is_done_once_the_new_champion_has_scored_it(tmp_path):
    airflow = Month001()
    runs = stack_over(airflow, tmp_path).run_month_lifecycle("month_001", timeout=10, poll=0)
    assert airflow.champion_run_states() == ["success"]
    assert airflow.champion_and_scorer() == ("2", "2")
    assert set(runs) == {*LIFECYCLE_DAGS, SCORE_DAG} and runs[SCORE_DAG]["state"] == "success"


@pytest.mark.parametrize("loaded", [False, True])
def test_a_month_an_interrupted_demo_loaded_is_loaded_again_with_force(tmp_path, loaded):
    """Otherwise its ingest finds the drop unchanged, emits no asset event, and the chain never runs."""
    airflow = Month001(loaded=loaded)
    stack_over(airflow, tmp_path).run_month_lifecycle("month_001", timeout=10, poll=0)
    assert airflow.conf == ({"month": "month_001", "force": True} if loaded else {"month": "month_001"})


def test_scores_are_final_only_when_every_scoring_run_finished_with_the_champion():
    done = [run("a", "success"), run("b", "success")]
    assert scores_settled(done, champion="2", scored_by="2")
    assert not scores_settled(done, champion="2", scored_by="1")  # the new champion's run not created yet
    assert not scores_settled(done, champion="2", scored_by=None)
    assert not scores_settled([run("a", "success"), run("b", "running")], champion="2", scored_by="2")
    assert not scores_settled([run("a", "queued")], champion="2", scored_by="2")
    assert scores_settled([], champion=None, scored_by=None)  # nothing to score with: nothing to wait for
    with pytest.raises(RuntimeError, match=f"{SCORE_DAG} failed \\(b\\)"):
        scores_settled([run("a", "success"), run("b", "failed")], champion="2", scored_by="1")


def test_waiting_for_scores_times_out_with_what_it_saw(tmp_path):
    class Stuck(Month001):
        def champion_run_states(self) -> list[str]:
            return []

    airflow = Stuck()
    expected = "month_001: not scored by champion v2, no progress for 0s \\(its scores are by v1\\)"
    with pytest.raises(TimeoutError, match=expected):
        wait_for_scores(
            airflow, "month_001", set(), 0.05, Processes(tmp_path / "logs", {}), airflow.champion_and_scorer, poll=0
        )


def test_a_slow_month_is_waited_for_as_long_as_its_runs_move(tmp_path):
    """Each poll takes 0.15 s and the month 0.75 s, far past the 0.2 s timeout, but no 0.2 s goes
    by without a run changing state: a busy machine is waited for, only a stuck chain times out."""

    class Slow(Month001):
        CHAMPION_RUN = {3: "queued", 4: "running"}

        def runs(self, dag_id: str) -> list[dict]:
            if dag_id == SCORE_DAG:
                time.sleep(0.15)
            return super().runs(dag_id)

    airflow = Slow()
    started = time.monotonic()
    runs = stack_over(airflow, tmp_path).run_month_lifecycle("month_001", timeout=0.2, poll=0)
    assert runs[SCORE_DAG]["state"] == "success" and time.monotonic() - started > 0.6


class SlowFirstAnswer(BaseHTTPRequestHandler):
    """An api-server that answers the first poll after the client has given up, the next at once."""

    calls = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        SlowFirstAnswer.calls += 1
        if SlowFirstAnswer.calls == 1:
            time.sleep(1.0)
        body = json.dumps({"dag_runs": [{"dag_run_id": "manual__1", "state": "running"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the first answer comes after the client left
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_poll_that_times_out_on_a_busy_machine_is_asked_again():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowFirstAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = AirflowAPI(f"http://127.0.0.1:{server.server_port}", "unused", timeout=0.3)
        assert api.runs("streamflow_ingest") == [{"dag_run_id": "manual__1", "state": "running"}]
        assert SlowFirstAnswer.calls == 2
    finally:
        server.shutdown()
        server.server_close()
