"""Idle CPU of a running `make demo` stack: every process it started, with no traffic.

Start `make demo` in another terminal first (this benchmark measures it, it starts nothing).
Each process under the demo (Airflow's api-server, scheduler, dag-processor, triggerer; MLflow;
the churn service's workers; the Evidently UI) and the embedded Postgres is sampled for
BENCH_IDLE_SECONDS (default 60): CPU % of one core per component and in all, the share of the
machine's cores it keeps busy, and the number of processes. Run: `python -m bench idle`.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

from bench.harness import demo_process

SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))

# First match wins: what a process of the demo is, by its command line.
COMPONENTS = (
    ("postgres", "postgres:"),  # a server backend: "postgres: <user> <database> ..." (e.g. mlflow's)
    ("postgres", "pgdata"),  # the postmaster
    ("airflow api-server", "airflow api-server"),
    ("airflow scheduler", "airflow scheduler"),
    ("airflow dag-processor", "airflow dag-processor"),
    ("airflow triggerer", "airflow triggerer"),
    ("airflow (other)", "airflow"),
    ("mlflow", "mlflow"),
    ("churn service", "bentoml"),
    ("churn service", "circusd"),
    ("evidently ui", "evidently"),
)


def component(cmdline: str) -> str:
    return next((name for name, needle in COMPONENTS if needle in cmdline), "other")


def demo_processes() -> list:
    """The demo process, everything under it, and its embedded Postgres (which daemonizes): the
    postmaster running on the demo's data directory and that postmaster's backends."""
    import psutil

    from streamflow_mlops.config.settings import get_settings

    demo = demo_process()
    if demo is None:
        return []
    procs = [demo, *demo.children(recursive=True)]
    # The demo's own state dir (its environment's STREAMFLOW_HOME, else the default), not this
    # process's settings: another benchmark run before this one points those at a temp dir.
    home = demo.environ().get("STREAMFLOW_HOME") or str(get_settings().repo_root / ".streamflow")
    pgdata = str(Path(home) / "pgdata")
    for proc in psutil.process_iter(["cmdline"]):
        if pgdata in " ".join(proc.info["cmdline"] or []) and proc.pid not in {p.pid for p in procs}:
            procs += [proc, *proc.children(recursive=True)]
    return procs


def cpu_seconds(procs: list) -> dict[int, tuple[str, float]]:
    import psutil

    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[proc.pid] = (component(" ".join(proc.cmdline())), times.user + times.system)
        except psutil.NoSuchProcess:
            pass
    return out


def main() -> None:
    procs = demo_processes()
    if not procs:
        print("no `make demo` stack is running: start it in another terminal, then run `python -m bench idle`")
        return
    before = cpu_seconds(procs)
    started = time.perf_counter()
    time.sleep(SECONDS)
    # Processes that started during the window count from 0 (those that ended are lost).
    after = cpu_seconds(demo_processes())
    before = {pid: before.get(pid, (name, 0.0)) for pid, (name, _) in after.items()}
    elapsed = time.perf_counter() - started
    by_component: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for pid, (name, seconds) in after.items():
        if pid in before:
            by_component[name][0] += seconds - before[pid][1]
            by_component[name][1] += 1
    total = sum(spent for spent, _ in by_component.values())
    cores = os.cpu_count() or 1
    print(
        f"demo stack idle for {elapsed:.0f}s: {len(after)} processes, {total / elapsed * 100:.1f}% of one core"
        f" in all ({total / elapsed / cores * 100:.1f}% of the machine's {cores} cores)"
    )
    print(f"{'component':<24}{'processes':>10}{'CPU % of a core':>17}")
    for name, (spent, count) in sorted(by_component.items(), key=lambda item: -item[1][0]):
        print(f"{name:<24}{count:>10}{spent / elapsed * 100:>17.1f}")


if __name__ == "__main__":
    main()
