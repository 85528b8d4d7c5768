"""The monthly cycle against the month's size (issue 25): every DAG run, wall time and peak memory.

For each size (100,000 and 1,000,000 users; `python -m bench scale --10m` adds 10,000,000, about
three hours here; `--users=N,M` measures just those) a new embedded stack (`python -m
streamflow_mlops stack up` in a state dir of its own), two generated months (the second
drifted), then the cycle as a user runs it by hand, one `airflow dags test` per DAG run under
`/usr/bin/time -v`:

    ingest, features, drift, train, score  of month_000 (drift: no champion yet)
    ingest, features, drift, train, score  of month_001 (drift and realized performance against
                                            the champion; train: challenger against champion)

Each line: wall time, peak RSS of the run (the `airflow dags test` process and the tasks it
runs), users per second, the 1-minute load average before the run (2 cores shared with whatever
else runs). Then the disk the state dir takes. `STREAMFLOW_CHUNK_ROWS` and
`STREAMFLOW_TRAIN_MAX_ROWS` pass through to the runs. `BENCH_SCALE_DIR` keeps the state dirs
there (default: a temp dir, removed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import free_port

SIZES = (100_000, 1_000_000)
TEN_MILLION = 10_000_000
CYCLE = [
    (dag, month)
    for month in ("month_000", "month_001")
    for dag in ("streamflow_ingest", "streamflow_features", "streamflow_drift", "streamflow_train", "streamflow_score")
]
GIB = 1024**3


def sizes(argv: list[str]) -> tuple[int, ...]:
    """SIZES, with 10M after `--10m`; `--users=N[,N...]` instead measures exactly those sizes."""
    for arg in argv:
        if arg.startswith("--users="):
            return tuple(int(n) for n in arg.removeprefix("--users=").split(","))
    return (*SIZES, TEN_MILLION) if "--10m" in argv else SIZES


def source_env(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines of the stack's env file (values are shell-quoted)."""
    import shlex

    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


def timed_run(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in bytes, exit code) of a command under GNU time, output to `log`."""
    with log.open("w") as out:
        started = time.perf_counter()
        timed = ["/usr/bin/time", "-v", *command]
        code = subprocess.run(timed, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - started
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read_text())
    return wall, int(match.group(1)) * 1024 if match else 0, code


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def run_size(users: int, root: Path) -> list[dict]:
    home = root / f"users_{users}"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "STREAMFLOW_HOME": str(home),
        "STREAMFLOW_DROPS_DIR": str(home / "drops"),
        "STREAMFLOW_PG_EMBEDDED_PORT": str(free_port()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    for name in ("STREAMFLOW_DB_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    python = sys.executable
    airflow = str(Path(python).with_name("airflow"))
    subprocess.run([python, "-m", "streamflow_mlops", "stack", "up"], env=env, check=True, capture_output=True)
    rows = []
    try:
        env.update(source_env(home / "env"))
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        generate = [python, "-m", "streamflow_mlops", "generate", "--months", "2", "--users", str(users)]
        rows.append(measure("generate both months", generate, env, home, users * 2))
        for dag, month in CYCLE:
            command = [airflow, "dags", "test", dag, "-c", json.dumps({"month": month})]
            rows.append(measure(f"{dag.removeprefix('streamflow_')} {month}", command, env, home, users))
        rows.append({"step": "state dir", "disk_bytes": disk_bytes(home)})
    finally:
        subprocess.run([python, "-m", "streamflow_mlops", "stack", "down"], env=env, capture_output=True)
    return rows


def measure(step: str, command: list[str], env: dict[str, str], home: Path, users: int) -> dict:
    load = os.getloadavg()[0]
    log = home / "logs" / f"{step.replace(' ', '_')}.log"
    log.parent.mkdir(exist_ok=True)
    wall, rss, code = timed_run(command, env, log)
    row = {"step": step, "wall": wall, "rss": rss, "users_per_s": users / wall, "load": load, "exit": code}
    status = "" if code == 0 else f"  FAILED (exit {code}, log {log})"
    print(
        f"  {step:<26} {wall:8.1f} s  peak RSS {rss / GIB:5.2f} GiB  {users / wall:>10,.0f} users/s"
        f"  load {load:4.1f}{status}",
        flush=True,
    )
    return row


def main() -> None:
    keep = os.environ.get("BENCH_SCALE_DIR")
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="streamflow-scale-"))
    chunk = os.environ.get("STREAMFLOW_CHUNK_ROWS", "default")
    print(f"the monthly cycle by size (chunk rows: {chunk}, state under {root})")
    try:
        results = {}
        for users in sizes(sys.argv[1:]):
            print(f"\n{users:,} users a month", flush=True)
            results[users] = run_size(users, root)
            print(f"  state dir: {results[users][-1]['disk_bytes'] / GIB:.2f} GiB", flush=True)
        print_growth(results)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def print_growth(results: dict[int, list[dict]]) -> None:
    """Per step, how wall time and peak RSS grew from the smallest size to the largest."""
    if len(results) < 2:
        return
    small, large = min(results), max(results)
    factor = large / small
    print(f"\ngrowth from {small:,} to {large:,} users (x{factor:g}):")
    for before, after in zip(results[small][:-1], results[large][:-1], strict=True):
        print(
            f"  {before['step']:<26} time x{after['wall'] / before['wall']:5.1f}   "
            f"peak RSS x{after['rss'] / max(before['rss'], 1):4.2f}"
        )
