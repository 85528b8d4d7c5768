"""Airflow reads AIRFLOW_HOME once, on first import: point it at a throwaway folder before any test
module here imports Airflow, so that no test reads or writes the user's ~/airflow."""

from __future__ import annotations

import os
import shutil
import tempfile


def pytest_configure(config):
    if "AIRFLOW_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="streamflow-test-airflow-")
        os.environ["AIRFLOW_HOME"] = home
        config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
