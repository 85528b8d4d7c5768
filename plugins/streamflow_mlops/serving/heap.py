"""Garbage-collector hygiene of a serving worker: what is loaded once stays out of the collector's
scans, and the pauses the collector still makes are measured for /metrics.

A full collection walks every object a worker holds, most of them loaded once (its libraries, the
champion); under load those walks set the p99 (docs/decisions.md, "GC pauses"). `gc.freeze()` after
a champion load moves what is alive into the permanent generation, so a full collection only walks
what requests created since.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def settle_heap() -> int:
    """Collect once, then freeze everything alive: call after a champion (and its libraries) loaded.

    The collection walks only what is not frozen yet (the whole heap the first time, the new
    champion's objects after a swap). A replaced champion is freed by reference counting; only
    reference cycles inside it would stay frozen, once per swap. Returns the frozen object count.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Counts the collector's pauses per generation (number, total and longest seconds) in this process."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()

    def _callback(self, phase: str, info: dict) -> None:
        generation = info["generation"]
        if phase == "start":
            self._started[generation] = time.perf_counter()
            return
        started = self._started.pop(generation, None)
        if started is None:
            return
        pause = time.perf_counter() - started
        with self._lock:
            self.count[generation] += 1
            self.total_s[generation] += pause
            self.max_s[generation] = max(self.max_s[generation], pause)

    def forget_longest(self) -> None:
        """Start the longest-pause gauges again (after settle_heap's deliberate full collection,
        so they show serving pauses, not that one)."""
        with self._lock:
            self.max_s = [0.0, 0.0, 0.0]

    def install(self) -> GcPauses:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def collect(self) -> Iterator[Metric]:
        """The pauses as Prometheus metric families (a prometheus_client collector), labelled with
        this worker's pid."""
        pid = str(os.getpid())
        with self._lock:
            count, total_s, max_s = list(self.count), list(self.total_s), list(self.max_s)
        runs = CounterMetricFamily(
            "streamflow_gc_pauses_total",
            "Garbage-collector runs in this worker, by generation.",
            labels=["pid", "generation"],
        )
        paused = CounterMetricFamily(
            "streamflow_gc_pause_seconds_total",
            "Time this worker spent stopped in the garbage collector.",
            labels=["pid", "generation"],
        )
        longest = GaugeMetricFamily(
            "streamflow_gc_pause_max_seconds",
            "The longest garbage-collector pause in this worker.",
            labels=["pid", "generation"],
        )
        for generation in range(3):
            runs.add_metric([pid, str(generation)], count[generation])
            paused.add_metric([pid, str(generation)], total_s[generation])
            longest.add_metric([pid, str(generation)], max_s[generation])
        frozen = GaugeMetricFamily(
            "streamflow_gc_frozen_objects", "Objects kept out of the collector's scans (gc.freeze).", labels=["pid"]
        )
        frozen.add_metric([pid], gc.get_freeze_count())
        return iter([runs, paused, longest, frozen])
