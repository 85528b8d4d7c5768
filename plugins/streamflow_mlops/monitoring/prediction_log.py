"""The prediction log: every served prediction written to Postgres by a background thread, off the request path."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogRow:
    predicted_at: datetime
    user_id: str
    features: Mapping[str, Any]
    churn_probability: float
    model_name: str
    model_version: str


class PredictionLogWriter:
    """Writes `prediction_log` in batches from a background thread; never blocks or fails a request.

    Rows wait in a bounded queue; when it is full, or a flush fails, the rows are dropped and
    counted (`dropped`, logged as a warning), and the next flush reconnects.
    """

    def __init__(
        self,
        db_url: str,
        max_queue: int = 50_000,
        batch_rows: int = 2_000,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.db_url = db_url
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.written = 0
        self.dropped = 0
        self._queue: queue.Queue[LogRow] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._count_lock = threading.Lock()
        self._dropped_reported = 0

    def submit(self, rows: Sequence[LogRow]) -> None:
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._count_dropped(1)

    def _count_dropped(self, n: int) -> None:
        with self._count_lock:
            self.dropped += n

    def _take_batch(self, wait_s: float) -> list[LogRow]:
        batch: list[LogRow] = []
        try:
            batch.append(self._queue.get(timeout=wait_s))
        except queue.Empty:
            return batch
        while len(batch) < self.batch_rows:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: Sequence[LogRow]) -> None:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.db_url, connect_timeout=3, autocommit=False)
        conn = self._conn
        columns = "predicted_at, user_id, features, churn_probability, model_name, model_version"
        with conn.cursor() as cur:
            with cur.copy(f"COPY {WAREHOUSE_SCHEMA}.prediction_log ({columns}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(
                        (
                            row.predicted_at,
                            row.user_id,
                            json.dumps(row.features, default=str),
                            row.churn_probability,
                            row.model_name,
                            row.model_version,
                        )
                    )
        conn.commit()

    def flush(self, batch: Sequence[LogRow]) -> bool:
        """Write one batch; on failure drop it, count it and forget the connection."""
        if not batch:
            return True
        try:
            self._write(batch)
        except Exception as exc:
            self._count_dropped(len(batch))
            logger.warning("prediction log: dropped %d rows (%d in total): %s", len(batch), self.dropped, exc)
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:
                    logger.debug("closing a broken log connection failed", exc_info=True)
            self._conn = None
            return False
        self.written += len(batch)
        return True

    def drain(self) -> None:
        """Write everything queued now (used at shutdown and by tests)."""
        while batch := self._take_batch(0.0):
            self.flush(batch)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            ok = self.flush(self._take_batch(self.flush_interval_s))
            if self.dropped != self._dropped_reported and self._queue.empty():
                self._dropped_reported = self.dropped
                logger.warning("prediction log: %d rows dropped since start", self.dropped)
            # After a failure wait a little before reconnecting, so a down database isn't hammered.
            backoff = 0.0 if ok else min(5.0, max(0.5, backoff * 2))
            if backoff:
                self._stop.wait(backoff)
        self.drain()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
