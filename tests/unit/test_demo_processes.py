"""The demo's child processes: the non-serving ones start at a lower CPU priority (their nice value
and, where Linux groups processes by session, their session's), and stop with their tree."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from streamflow_mlops.config.settings import get_settings
from streamflow_mlops.platform.demo import airflow_settings
from streamflow_mlops.platform.processes import Processes
from tests.conftest import settings_from


def autogroup_nice(pid: int) -> int | None:
    """The nice value of the process's autogroup ("/autogroup-123 nice 7"), None without autogroups."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def test_background_processes_yield_the_cpu_to_serving_and_stop_cleanly(tmp_path):
    processes = Processes(tmp_path / "logs", dict(os.environ))
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    processes.start("background", sleeper, nice=7)
    processes.start("serving", sleeper)
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        background = psutil.Process(processes.running["background"].pid)
        deadline = time.monotonic() + 20
        while background.cmdline() != sleeper:  # the launcher has exec'd the command, same pid
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert background.nice() == min(19, base + 7)
        assert psutil.Process(processes.running["serving"].pid).nice() == base
        if autogroup_nice(os.getpid()) is not None:  # its own session's group ranks lower too
            assert autogroup_nice(background.pid) == 7
            assert autogroup_nice(processes.running["serving"].pid) == 0
    finally:
        pids = [proc.pid for proc in processes.running.values()]
        processes.stop(grace=5)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_the_nice_setting_is_read_leniently(monkeypatch):
    def nice(raw: str) -> int:
        return settings_from({"STREAMFLOW_DEMO_NICE": raw}, monkeypatch).demo_nice

    monkeypatch.delenv("STREAMFLOW_DEMO_NICE", raising=False)
    assert settings_from({}, monkeypatch).demo_nice == nice("") == nice("lots") == 10
    assert nice("0") == 0 and nice("40") == 19 and nice("-5") == 0


def test_unchanged_dag_files_are_not_reparsed_every_30_seconds(tmp_path):
    config = airflow_settings(get_settings().model_copy(update={"state_dir": tmp_path}))
    assert int(config["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"]) >= 300
