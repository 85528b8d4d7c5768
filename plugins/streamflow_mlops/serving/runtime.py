"""Request logic of the churn service: feature reads, the champion holder, scoring, the prediction log.

The BentoML service (bentos/churn_service/service.py) is a thin shell over these pieces, so each
of them can be tested without HTTP. Requests never touch MLflow or Postgres: the champion is polled
and swapped off the request path, and predictions are logged by a background thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from streamflow_mlops.config.settings import Settings
from streamflow_mlops.monitoring.prediction_log import PredictionLogWriter
from streamflow_mlops.serving.champion import POLL_INTERVAL_S, ChampionWatcher, ModelHolder, mlflow_champion_version
from streamflow_mlops.serving.errors import Unavailable
from streamflow_mlops.serving.feature_reader import FeatureRef, FeatureRows, OnlineFeatureReader, build_reader
from streamflow_mlops.serving.heap import GcPauses
from streamflow_mlops.serving.scoring import ChurnScorer, MicroBatcher
from streamflow_mlops.serving.shadow import ShadowScorer, ShadowWatcher, mlflow_shadow_watcher


def worker_count(settings: Settings) -> int:
    """Worker processes per service: STREAMFLOW_SERVICE_WORKERS, else one per core, up to 4. A
    worker's event loop tops out near one core (HTTP parsing and BentoML's request path are most of
    a request's CPU): on 2 cores 2 workers gave ~1.6x one worker's requests/s at concurrency 32
    (bench/bench_serving.py)."""
    return settings.service_workers or min(4, os.cpu_count() or 1)


logger = logging.getLogger(__name__)


# Read by every /readyz; no user has it (user ids look like 7590-VHVEG).
READINESS_PROBE_ID = "readiness-probe"


class ServiceRuntime:
    """What one service worker runs: the champion holder, the reader, the scorer and their threads.

    A background thread builds the feature reader (retrying while the registry is down) and polls
    the champion (and the `shadow` alias, serving/shadow.py) every `poll_interval_s`; requests only
    read what it prepared. A runtime given its own `read_champion_version` follows a shadow only
    through a `shadow_watcher` of its own. `metrics()` is what the worker shows on /metrics.
    """

    def __init__(
        self,
        settings: Settings,
        read_champion_version: Callable[[], str | None] | None = None,
        poll_interval_s: float | None = None,
        reader_factory: Callable[[Settings], OnlineFeatureReader] = build_reader,
        log_writer: PredictionLogWriter | None = None,
        after_swap: Callable[[], object] | None = None,
        shadow_watcher: ShadowWatcher | None = None,
        gc_pauses: GcPauses | None = None,
    ) -> None:
        self.settings = settings
        if poll_interval_s is None:
            poll_interval_s = settings.champion_poll_s or POLL_INTERVAL_S
        self.poll_interval_s = poll_interval_s
        self.reader_factory = reader_factory
        # Run by the watcher thread once a new champion is loaded and its feature list warmed
        # (the service passes serving.heap.settle_heap).
        self.after_swap = after_swap
        self.holder = ModelHolder()
        self.watcher = ChampionWatcher(self.holder, read_champion_version or mlflow_champion_version(settings))
        self.log = log_writer if log_writer is not None else PredictionLogWriter(settings.db_url)
        if shadow_watcher is None and read_champion_version is None:
            shadow_watcher = mlflow_shadow_watcher(settings)
        self.shadow_watcher = shadow_watcher
        self.shadow = ShadowScorer(self.log, lambda: shadow_watcher.shadow if shadow_watcher else None)
        self.reader: OnlineFeatureReader | None = None
        self.scorer = ChurnScorer(self.holder, _RuntimeReader(self), self.shadow)
        self.batcher = MicroBatcher(self.scorer.score)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics = CollectorRegistry(auto_describe=False)
        self._metrics.register(_WorkerCounters(self))
        if gc_pauses is not None:
            self._metrics.register(gc_pauses)

    def require_reader(self) -> OnlineFeatureReader:
        if self.reader is None:
            try:
                self.reader = self.reader_factory(self.settings)
            except Exception as exc:
                raise Unavailable("feature_store", f"cannot open the feature store: {exc}") from exc
        return self.reader

    def poll(self) -> None:
        """One round of the background work: open the store, follow the champion, warm its features."""
        try:
            reader = self.require_reader()
        except Unavailable as exc:
            logger.warning("%s", exc)
            return
        swapped = self.watcher.poll_once()
        shadow_moved = False
        if self.shadow_watcher is not None:
            champion = self.holder.champion
            shadow_moved = self.shadow_watcher.poll_once(champion.version if champion else None)
        try:
            if swapped:
                reader.forget_refs()
            champion = self.holder.champion
            if champion is not None:
                try:
                    reader.feature_refs(champion.feature_service)
                except Unavailable as exc:
                    logger.warning("%s", exc)
        finally:
            # A newly loaded shadow's objects are frozen out of the collector's scans like a champion's.
            if (swapped or shadow_moved) and self.after_swap is not None:
                self.after_swap()

    def ready(self) -> bool:
        """A champion is loaded, the store knows its FeatureService and its online store answers."""
        champion = self.holder.champion
        if champion is None or self.reader is None:
            return False
        try:
            refs = self.reader.feature_refs(champion.feature_service)
            # The registry lives in Postgres, the online values elsewhere (Redis in compose): a
            # lookup of an id no user has answers only while the online store does.
            self.reader.read([READINESS_PROBE_ID], champion.feature_service)
        except Unavailable:
            return False
        return bool(refs)

    def metrics(self) -> str:
        """This worker's counters (and its GC pauses, when given) in Prometheus' text format, each
        sample labelled with the worker's pid: a scrape reaches one worker."""
        return generate_latest(self._metrics).decode()

    def _poll_safely(self) -> None:
        # The watcher thread must outlive any one failed poll (MLflow down, a store that raises on
        # a name never imported, a broken model): a dead watcher would never pick up a champion.
        try:
            self.poll()
        except Exception:
            logger.exception("champion poll failed; retrying in %.0f s", self.poll_interval_s)

    def _run(self) -> None:
        try:
            self._poll_safely()
        finally:
            self.holder.settle()
        while not self._stop.wait(self.poll_interval_s):
            self._poll_safely()

    def start(self) -> None:
        self.log.start()
        self.shadow.start()
        self.holder.loading()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.batcher.close()
        self.shadow.stop()
        self.log.stop()


class _RuntimeReader:
    """The runtime's reader as the scorer sees it: opened on first use, 503 while it can't be."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    def feature_refs(self, feature_service: str) -> tuple[FeatureRef, ...]:
        return self.runtime.require_reader().feature_refs(feature_service)

    def read(self, user_ids: Sequence[str], feature_service: str) -> FeatureRows:
        return self.runtime.require_reader().read(user_ids, feature_service)

    def forget_refs(self) -> None:
        if self.runtime.reader is not None:
            self.runtime.reader.forget_refs()


class _WorkerCounters:
    """The runtime's counters as Prometheus metric families (a prometheus_client collector), read at
    each scrape."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime, pid = self.runtime, str(os.getpid())
        log, batcher, shadow = runtime.log, runtime.batcher, runtime.shadow
        champion, watcher = runtime.holder.champion, runtime.shadow_watcher
        shadow_model = watcher.shadow if watcher is not None else None
        # Info-style gauges: always 1, the version (empty: none) in a label.
        versions = {
            "streamflow_champion_info": ("The model version this worker serves.", champion),
            "streamflow_shadow_info": ("The model version this worker scores in shadow (empty: none).", shadow_model),
        }
        counters = {
            "streamflow_prediction_log_dropped_rows_total": (
                "Log rows dropped (queue full or write failed).",
                log.dropped,
            ),
            "streamflow_prediction_log_written_rows_total": ("Prediction log rows written.", log.written),
            "streamflow_predict_requests_total": (
                "Single /predict calls this worker scored (micro-batched).",
                batcher.items,
            ),
            "streamflow_predict_batches_total": (
                "Model calls those /predict requests were coalesced into.",
                batcher.batches,
            ),
            "streamflow_shadow_scored_rows_total": ("Served rows the shadow version also scored.", shadow.scored),
            "streamflow_shadow_dropped_rows_total": (
                "Rows logged without a shadow score: its queue was full.",
                shadow.dropped,
            ),
            "streamflow_shadow_skipped_rows_total": (
                "Rows the shadow did not score (a missing feature, a failure).",
                shadow.skipped,
            ),
        }
        for name, (documentation, model) in versions.items():
            family = GaugeMetricFamily(name, documentation, labels=["pid", "version"])
            family.add_metric([pid, model.version if model is not None else ""], 1)
            yield family
        for name, (documentation, value) in counters.items():
            family = CounterMetricFamily(name, documentation, labels=["pid"])
            family.add_metric([pid], value)
            yield family
