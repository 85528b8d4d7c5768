"""The demo's child processes: the non-serving ones start at a lower CPU priority, and stop with their tree."""

from __future__ import annotations

import os
import sys

import psutil

from streamflow_mlops.platform.demo import Processes, airflow_settings


def test_background_processes_yield_the_cpu_to_serving_and_stop_cleanly(tmp_path):
    processes = Processes(tmp_path / "logs", dict(os.environ))
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    processes.start("background", sleeper, nice=7)
    processes.start("serving", sleeper)
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert psutil.Process(processes.running["background"].pid).nice() == min(19, base + 7)
        assert psutil.Process(processes.running["serving"].pid).nice() == base
    finally:
        pids = [proc.pid for proc in processes.running.values()]
        processes.stop(grace=5)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_unchanged_dag_files_are_not_reparsed_every_30_seconds(tmp_path):
    from dataclasses import replace

    from streamflow_mlops.config.settings import get_settings

    config = airflow_settings(replace(get_settings(), state_dir=tmp_path))
    assert int(config["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"]) >= 300
