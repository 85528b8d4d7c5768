"""The demo's child processes: started each in its own session (stopping takes the whole tree), the
non-serving ones at a lower CPU priority, and waited for until they answer.

`python -m streamflow_mlops.platform.processes --nice N -- cmd ...` is the small launcher that
lowers the priority in the child and then execs `cmd` (so the child keeps its pid and name, and no
Python code runs between fork and exec in the demo process, which has threads).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def lower_priority(nice: int) -> None:
    """Lower this process's CPU priority by `nice`, and its session's autogroup's: where Linux
    groups processes by session (sched_autogroup_enabled, the default on desktops and this VM),
    nice alone only ranks processes inside one session, and every child here has its own."""
    os.nice(nice)
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(nice))
    except OSError:  # not Linux, or autogroups off: the nice value is what counts
        pass


@dataclass
class Processes:
    """Child processes, each in its own session so that stopping takes its whole tree."""

    log_dir: Path
    env: dict[str, str]
    running: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list[str], cwd: Path | None = None, nice: int = 0) -> None:
        """Start `args` in its own session; `nice` > 0 lowers its CPU priority (and its children's)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        if nice > 0:
            args = [sys.executable, "-m", __name__, "--nice", str(nice), "--", *args]
        self.running[name] = subprocess.Popen(
            args, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def check(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir / name}.log")

    def stop(self, grace: float = 8.0) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.running.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.running.clear()


def wait_for(what: str, ready: Callable[[], bool], timeout: float, processes: Processes | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if processes is not None:
            processes.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(1)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str]) -> None:
    """`--nice N -- cmd ...`: lower the priority, then become `cmd`."""
    if len(argv) < 4 or argv[0] != "--nice" or argv[2] != "--":
        raise SystemExit("usage: python -m streamflow_mlops.platform.processes --nice N -- cmd ...")
    lower_priority(int(argv[1]))
    os.execvp(argv[3], argv[3:])


if __name__ == "__main__":
    main(sys.argv[1:])
