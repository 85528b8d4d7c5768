"""Shadow scoring: a second model version scored on the rows the champion served, off the request path.

The registry alias `shadow` names the version: the training DAG's review sets it on a challenger
while its promotion waits for a reviewer (pipelines/review.py), and a person may set it on any
version. The watcher thread follows it like the champion's alias and loads the version straight from
MLflow: it stays out of the BentoML store, whose newest model means "champion" to a service that
can't reach MLflow.

A scored batch's log rows go to a bounded queue; a thread scores them with the shadow and passes
them, with the shadow's version and probability, to the prediction log. The answer and its latency
are the champion's alone. A full queue drops the shadow score, never the row (the champion's rows go
straight to the log); drops are counted in /metrics.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from streamflow_mlops.config.settings import REGISTERED_MODEL, SHADOW_ALIAS, Settings
from streamflow_mlops.model.registry import load_version, mlflow_client, model_uri
from streamflow_mlops.monitoring.prediction_log import LogRow, PredictionLogWriter, take_up_to
from streamflow_mlops.serving.champion import Champion, aliased_version_from_mlflow, checked_threshold, pipeline_model

logger = logging.getLogger(__name__)


# Batches of log rows (one per model call: a micro-batch of /predict calls, or one /predict_batch)
# waiting for the shadow: bounded, so a shadow slower than the champion sheds scores, not memory.
MAX_QUEUED_BATCHES = 256

# Queued batches scored in one shadow model call.
MAX_BATCHES_PER_CALL = 16


def shadow_target(shadow: str | None, champion: str | None) -> str | None:
    """The version to score in shadow: the alias's, unless there is none or it is the champion."""
    if shadow is None or shadow == champion:
        return None
    return shadow


def shadow_rows(rows: Sequence[LogRow], shadow: Champion) -> tuple[list[LogRow], int]:
    """`rows` with the shadow's version and probability filled in, and how many were left without
    (their features lack one the shadow needs: a shadow of another FeatureService)."""
    columns = getattr(shadow.model, "columns", None)
    scorable = [i for i, row in enumerate(rows) if columns is None or all(c in row.features for c in columns)]
    filled = list(rows)
    if scorable:
        probabilities = shadow.model.predict_proba([rows[i].features for i in scorable])
        for i, probability in zip(scorable, probabilities, strict=True):
            filled[i] = replace(rows[i], shadow_version=shadow.version, shadow_probability=float(probability))
    return filled, len(rows) - len(scorable)


def load_shadow(version: str, tracking_uri: str) -> Champion:
    """A registered version loaded from MLflow (model, threshold and FeatureService from its tags)."""
    import mlflow.artifacts

    registered = load_version(mlflow_client(tracking_uri), version)
    threshold = checked_threshold(registered.threshold)
    uri = model_uri(version)
    with tempfile.TemporaryDirectory(prefix="streamflow-shadow-") as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri
        )
        model = pipeline_model(path, uri)
    return Champion(REGISTERED_MODEL, version, uri, threshold, registered.feature_service, model)


class ShadowWatcher:
    """Follows the `shadow` alias from the watcher thread: loads the version it names, drops the
    shadow when the alias goes or lands on the champion. MLflow unreachable: nothing changes."""

    def __init__(self, read_shadow_version: Callable[[], str | None], load: Callable[[str], Champion]) -> None:
        self.read_shadow_version = read_shadow_version
        self.load = load
        self.shadow: Champion | None = None
        self.last_error: str | None = None

    def poll_once(self, champion_version: str | None) -> bool:
        """Follow the alias; True when the shadow changed (loaded, replaced or dropped)."""
        try:
            wanted = shadow_target(self.read_shadow_version(), champion_version)
        except Exception as exc:
            self.last_error = f"shadow lookup failed: {exc}"
            logger.warning("%s", self.last_error)
            return False
        self.last_error = None
        current = self.shadow
        if current is not None and current.version == wanted:
            return False
        if wanted is None:
            if current is None:
                return False
            self.shadow = None
            logger.info("shadow v%s dropped", current.version)
            return True
        # The alias moved off the current shadow: stop scoring it even if its successor fails to load.
        self.shadow = None
        try:
            self.shadow = self.load(wanted)
        except Exception as exc:
            self.last_error = f"loading shadow v{wanted} failed: {exc}"
            logger.warning("%s", self.last_error)
            return current is not None
        logger.info("shadow %s -> v%s", f"v{current.version}" if current else None, wanted)
        return True


def mlflow_shadow_watcher(settings: Settings) -> ShadowWatcher:
    """A ShadowWatcher on the settings' MLflow: the alias read and the version loaded from there."""
    uri = settings.mlflow_tracking_uri
    return ShadowWatcher(
        lambda: aliased_version_from_mlflow(uri, SHADOW_ALIAS), lambda version: load_shadow(version, uri)
    )


class ShadowScorer:
    """The scorer's log sink: rows pass to the prediction log, through the shadow's thread while a
    shadow is loaded. Never blocks a request and never loses a row."""

    def __init__(
        self,
        log: PredictionLogWriter,
        current: Callable[[], Champion | None],
        max_batches: int = MAX_QUEUED_BATCHES,
    ) -> None:
        self.log = log
        self.current = current
        self.scored = 0
        self.dropped = 0
        self.skipped = 0
        self._queue: queue.Queue[Sequence[LogRow]] = queue.Queue(maxsize=max_batches)
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, rows: Sequence[LogRow]) -> None:
        if self.current() is None:
            self.log.submit(rows)
            return
        try:
            self._queue.put_nowait(rows)
        except queue.Full:
            with self._count_lock:
                self.dropped += len(rows)
            self.log.submit(rows)

    def _take(self, wait_s: float) -> list[LogRow]:
        return [row for batch in take_up_to(self._queue, wait_s, MAX_BATCHES_PER_CALL) for row in batch]

    def score_pending(self, wait_s: float = 0.0) -> int:
        """Score what is queued (up to MAX_BATCHES_PER_CALL batches) and pass it to the log; rows taken."""
        rows = self._take(wait_s)
        if not rows:
            return 0
        shadow = self.current()
        skipped = len(rows)
        if shadow is not None:
            try:
                rows, skipped = shadow_rows(rows, shadow)
            except Exception:
                logger.exception("shadow v%s failed on %d rows; logged without its scores", shadow.version, len(rows))
        with self._count_lock:
            self.scored += len(rows) - skipped
            self.skipped += skipped
        self.log.submit(rows)
        return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.score_pending(wait_s=0.5)
        self._drain()

    def _drain(self) -> None:
        while self.score_pending():
            pass

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Score and pass on what is queued, then stop (before the prediction log stops)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)  # its loop drains the queue on the way out
        else:
            self._drain()
