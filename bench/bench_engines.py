"""The same month on both engines, side by side (issue 26): ingest, features, train, score.

For each engine, a new embedded stack (`python -m streamflow_mlops stack up` in a state dir of its
own) and one generated month of 1,000,000 users (`--users=N` for another size), then the DAG runs
a user would make, one `airflow dags test` each, with STREAMFLOW_ENGINE set:

    postgres   the default: the warehouse in the embedded Postgres, the task's own process
    spark      STREAMFLOW_ENGINE=spark, STREAMFLOW_SPARK_MASTER=local[2]: the lake under the state
               dir, the task is Spark's driver and its two executor threads (plus Python workers)

Each line: wall time; peak memory of the run's whole process tree, sampled every 0.2 s (the
`airflow dags test` process, the task, and on Spark the JVM and its Python workers: GNU time's
peak is one process's, not the tree's); users per second; the 1-minute load average before the
run. Then, per step, spark's time and memory against postgres's. `--engines=spark` runs one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_scale import source_env
from bench.harness import free_port

USERS = 1_000_000
ENGINES = {
    "postgres": {"STREAMFLOW_ENGINE": "postgres"},
    "spark": {"STREAMFLOW_ENGINE": "spark", "STREAMFLOW_SPARK_MASTER": "local[2]"},
}
STEPS = ("streamflow_ingest", "streamflow_features", "streamflow_train", "streamflow_score")
GIB = 1024**3


def option(argv: list[str], name: str, default: str) -> str:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def tree_rss(pid: int) -> int:
    import psutil

    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_sampled(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS of the process tree, exit code)."""
    peak = 0
    with log.open("w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.2):
                peak = max(peak, tree_rss(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
        return time.perf_counter() - started, peak, code


def run_engine(engine: str, users: int, root: Path) -> list[dict]:
    home = root / engine
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **ENGINES[engine],
        "STREAMFLOW_HOME": str(home),
        "STREAMFLOW_DROPS_DIR": str(home / "drops"),
        "STREAMFLOW_PG_EMBEDDED_PORT": str(free_port()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    for name in ("STREAMFLOW_DB_URL", "MLFLOW_TRACKING_URI", "STREAMFLOW_LAKE_URL"):
        env.pop(name, None)
    python = sys.executable
    airflow = str(Path(python).with_name("airflow"))
    subprocess.run([python, "-m", "streamflow_mlops", "stack", "up"], env=env, check=True, capture_output=True)
    rows = []
    try:
        env.update(source_env(home / "env"))
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        generate = [python, "-m", "streamflow_mlops", "generate", "--months", "1", "--users", str(users)]
        subprocess.run(generate, env=env, check=True, capture_output=True)
        for dag in STEPS:
            command = [airflow, "dags", "test", dag, "-c", json.dumps({"month": "month_000"})]
            rows.append(measure(engine, dag.removeprefix("streamflow_"), command, env, home, users))
    finally:
        subprocess.run([python, "-m", "streamflow_mlops", "stack", "down"], env=env, capture_output=True)
    return rows


def measure(engine: str, step: str, command: list[str], env: dict[str, str], home: Path, users: int) -> dict:
    load = os.getloadavg()[0]
    log = home / "logs" / f"{step}.log"
    log.parent.mkdir(exist_ok=True)
    wall, rss, code = run_sampled(command, env, log)
    status = "" if code == 0 else f"  FAILED (exit {code}, log {log})"
    print(
        f"  {engine:<9} {step:<9} {wall:8.1f} s  peak RSS {rss / GIB:5.2f} GiB  {users / wall:>9,.0f} users/s"
        f"  load {load:4.1f}{status}",
        flush=True,
    )
    return {"engine": engine, "step": step, "wall": wall, "rss": rss, "load": load, "exit": code}


def main() -> None:
    argv = sys.argv[1:]
    users = int(option(argv, "users", str(USERS)))
    engines = option(argv, "engines", ",".join(ENGINES)).split(",")
    keep = os.environ.get("BENCH_ENGINES_DIR")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="streamflow-engines-"))
    print(f"one month of {users:,} users through ingest, features, train and score, by engine (state under {root})")
    try:
        results = {engine: run_engine(engine, users, root) for engine in engines}
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if {"postgres", "spark"} <= set(results):
        print("\nspark local[2] against postgres, per step:")
        for pg, sp in zip(results["postgres"], results["spark"], strict=True):
            time_ratio, rss_ratio = sp["wall"] / pg["wall"], sp["rss"] / max(pg["rss"], 1)
            print(f"  {pg['step']:<9} time x{time_ratio:5.2f}   peak RSS x{rss_ratio:5.2f}")


if __name__ == "__main__":
    main()
