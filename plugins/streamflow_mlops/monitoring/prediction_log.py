"""The prediction log: every served prediction written to Postgres by a background thread, off the request path."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streamflow_mlops.config.settings import WAREHOUSE_SCHEMA

logger = logging.getLogger(__name__)


# A write pauses every YIELD_EVERY_ROWS rows (~0.4 ms of Python) so a request waiting for the GIL
# gets it within that, not after Python's 5 ms switch interval.
YIELD_EVERY_ROWS = 32
YIELD_PAUSE_S = 0.0002


@dataclass(frozen=True)
class LogRow:
    predicted_at: datetime
    user_id: str
    features: Mapping[str, Any]
    churn_probability: float
    model_name: str
    model_version: str
    # The version scored in shadow beside the champion (serving/shadow.py) and its probability.
    shadow_version: str | None = None
    shadow_probability: float | None = None


COLUMNS = ("predicted_at", "user_id", "features", "churn_probability", "model_name", "model_version")
SHADOW_COLUMNS = ("shadow_version", "shadow_probability")


def take_up_to(source: queue.Queue, wait_s: float, limit: int) -> list:
    """Up to `limit` items of `source`: the first waited for up to `wait_s` (0: not at all), the rest
    only if already there. Empty when nothing came."""
    taken = []
    try:
        taken.append(source.get(timeout=wait_s) if wait_s > 0 else source.get_nowait())
    except queue.Empty:
        return taken
    while len(taken) < limit:
        try:
            taken.append(source.get_nowait())
        except queue.Empty:
            break
    return taken


class PredictionLogWriter:
    """Writes `prediction_log` in batches from a background thread; never blocks or fails a request.

    Rows wait in a bounded queue. A batch that fails to write (Postgres down, a restart) is kept and
    retried with a growing pause (0.5 s doubling to 5 s) while new rows keep queueing, so an outage
    shorter than the queue's headroom loses nothing. Rows are lost only when the queue is full, or
    when they are still unwritten `stop_timeout_s` after shutdown began; both are counted in
    `dropped` (the service exports it in /metrics) and logged.
    """

    def __init__(
        self,
        db_url: str,
        max_queue: int = 50_000,
        batch_rows: int = 2_000,
        flush_interval_s: float = 1.0,
        stop_timeout_s: float = 5.0,
        linger_s: float = 0.25,
    ) -> None:
        self.db_url = db_url
        self.linger_s = linger_s
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.stop_timeout_s = stop_timeout_s
        self.written = 0
        self.dropped = 0
        self.failed_writes = 0
        self._queue: queue.Queue[LogRow] = queue.Queue(maxsize=max_queue)
        self._pending: list[LogRow] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._count_lock = threading.Lock()

    def submit(self, rows: Sequence[LogRow]) -> None:
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self._count_dropped(1, "the queue is full")

    def _count_dropped(self, n: int, why: str) -> None:
        with self._count_lock:
            self.dropped += n
        logger.warning("prediction log: dropped %d rows (%d in total): %s", n, self.dropped, why)

    def _take_batch(self, wait_s: float) -> list[LogRow]:
        return take_up_to(self._queue, wait_s, self.batch_rows)

    def _write(self, batch: Sequence[LogRow]) -> None:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.db_url, connect_timeout=3, autocommit=False)
        conn = self._conn
        # The shadow columns only when the batch has shadow scores: a warehouse created before them
        # takes the champion's rows as it always did.
        shadowed = any(row.shadow_version is not None for row in batch)
        try:
            self._copy(conn, batch, shadowed)
        except psycopg.errors.UndefinedColumn:
            if not shadowed:
                raise
            conn.rollback()
            add_shadow_columns(conn)
            self._copy(conn, batch, shadowed)
        conn.commit()

    @staticmethod
    def _copy(conn: Any, batch: Sequence[LogRow], shadowed: bool) -> None:
        columns = ", ".join(COLUMNS + SHADOW_COLUMNS if shadowed else COLUMNS)
        with conn.cursor() as cur:
            with cur.copy(f"COPY {WAREHOUSE_SCHEMA}.prediction_log ({columns}) FROM STDIN") as copy:
                for n, row in enumerate(batch, 1):
                    if n % YIELD_EVERY_ROWS == 0:
                        # Hand the GIL to the request threads now and then: ~12 us of Python per
                        # row would otherwise hold it for a whole 5 ms switch interval at a time.
                        time.sleep(YIELD_PAUSE_S)
                    values = (
                        row.predicted_at,
                        row.user_id,
                        json.dumps(row.features, default=str),
                        row.churn_probability,
                        row.model_name,
                        row.model_version,
                    )
                    copy.write_row(values + (row.shadow_version, row.shadow_probability) if shadowed else values)

    def flush(self, batch: Sequence[LogRow]) -> bool:
        """Write one batch; on failure forget the connection and return False (the caller keeps it)."""
        if not batch:
            return True
        try:
            self._write(batch)
        except Exception as exc:
            self.failed_writes += 1
            logger.warning("prediction log: writing %d rows failed, will retry: %s", len(batch), exc)
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:
                    logger.debug("closing a broken log connection failed", exc_info=True)
            self._conn = None
            return False
        self.written += len(batch)
        return True

    def _step(self, wait_s: float) -> bool:
        """Write the pending batch, or the next one from the queue; False when a write failed."""
        if not self._pending:
            self._pending = self._take_batch(wait_s)
        if self.flush(self._pending):
            self._pending = []
            return True
        return False

    def drain(self, timeout_s: float | None = None) -> None:
        """Write everything queued now, retrying for up to `timeout_s` (default: stop_timeout_s);
        whatever is still unwritten then is counted as dropped."""
        deadline = time.monotonic() + (self.stop_timeout_s if timeout_s is None else timeout_s)
        pause = 0.1
        while self._pending or not self._queue.empty():
            if self._step(0.0):
                continue
            if time.monotonic() + pause > deadline:
                lost = len(self._pending) + self._queue.qsize()
                self._pending = []
                while self._take_batch(0.0):
                    pass
                self._count_dropped(lost, "still unwritten at shutdown")
                return
            time.sleep(pause)
            pause = min(1.0, pause * 2)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            ok = self._step(self.flush_interval_s)
            # After a failure wait a little before reconnecting, so a down database isn't hammered.
            backoff = 0.0 if ok else min(5.0, max(0.5, backoff * 2))
            if backoff:
                self._stop.wait(backoff)
            elif self._queue.qsize() < self.batch_rows:
                # Let rows gather instead of writing each one as it arrives: at 1,500 req/s a write
                # per handful of rows kept this thread taking the GIL from the request threads.
                self._stop.wait(self.linger_s)
        self.drain()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_timeout_s + 10)
        else:
            self.drain()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def add_shadow_columns(conn: Any) -> None:
    """Add the shadow columns to a `prediction_log` created before them (the warehouse's own DDL,
    which ingestion also runs): a service in front of an older warehouse logs its shadow anyway."""
    from streamflow_mlops.data.warehouse import PREDICTION_LOG_SHADOW_DDL

    logger.info("prediction log: adding the shadow columns to %s.prediction_log", WAREHOUSE_SCHEMA)
    with conn.transaction():
        for statement in PREDICTION_LOG_SHADOW_DDL:
            conn.execute(statement)
