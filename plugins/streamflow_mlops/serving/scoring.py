"""Scoring requests: the JSON answer, the scorer (features in, probability out) and the micro-batcher
coalescing single calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from streamflow_mlops.model.compiled import ProbabilityModel
from streamflow_mlops.model.reasons import reasons_for, top_reason_indices
from streamflow_mlops.model.registry import feature_service_or_default
from streamflow_mlops.monitoring.prediction_log import LogRow
from streamflow_mlops.serving.champion import FIRST_LOAD_WAIT_S, Champion, ModelHolder
from streamflow_mlops.serving.errors import ServingError, Unavailable
from streamflow_mlops.serving.feature_reader import OnlineFeatureReader, split_lookup

logger = logging.getLogger(__name__)


# A batch request is answered in one feature read and one model call; 500 ids keep that under a few
# tens of milliseconds, so one caller can't hold a worker long enough to starve the others.
MAX_BATCH_IDS = 500


# Single /predict calls coalesced into one model call: past ~64 the per-batch cost stops shrinking.
MAX_COALESCED = 64


# A request waits at most this long for its batch; past it the answer is a 503, never a hang.
REQUEST_TIMEOUT_S = 10.0


def answer(
    user_id: str,
    probability: float,
    champion: Champion,
    features: Mapping[str, Any],
    reasons: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The JSON answer of one prediction (docs/architecture.md, "Service"); `reasons` are the top
    features raising the risk (model/reasons.py), empty for a model without exact contributions."""
    return {
        "user_id": user_id,
        "churn_probability": probability,
        "churn": probability >= champion.threshold,
        "threshold": champion.threshold,
        "model": {"name": champion.name, "version": champion.version},
        "features": dict(features),
        "reasons": [dict(reason) for reason in reasons],
    }


def scored_reasons(
    model: ProbabilityModel, rows: Sequence[Mapping[str, Any]]
) -> tuple[Sequence[float], list[list[dict[str, Any]]]]:
    """Probabilities and each row's top reasons; a model that can't explain itself (a tree, a
    stand-in) gets empty reasons and costs no more than its predict_proba."""
    explain = getattr(model, "explain", None)
    if explain is None:
        return model.predict_proba(rows), [[] for _ in rows]
    probabilities, contributions = explain(rows)
    if contributions is None:
        return probabilities, [[] for _ in rows]
    features = model.explainer.features
    indices = top_reason_indices(contributions)
    return probabilities, [
        reasons_for(features, row, row_contributions, row_indices)
        for row, row_contributions, row_indices in zip(rows, contributions, indices, strict=True)
    ]


class LogSink(Protocol):
    """Where scored rows go: the prediction log, or the shadow scorer in front of it (serving/shadow.py)."""

    def submit(self, rows: Sequence[LogRow]) -> None: ...


@dataclass
class ChurnScorer:
    """Scores a batch of user ids against the current champion: one feature read, one model call."""

    holder: ModelHolder
    reader: OnlineFeatureReader
    log: LogSink | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def require_champion(self) -> Champion:
        champion = self.holder.champion
        if champion is None:
            # A worker that just started takes requests while its first champion loads (several
            # workers share one port and /readyz answers from one of them): wait rather than 503.
            champion = self.holder.wait_for_first(FIRST_LOAD_WAIT_S)
        if champion is None:
            raise Unavailable("model", "no champion loaded yet")
        return champion

    def score(self, user_ids: Sequence[str]) -> list[dict[str, Any] | ServingError]:
        """One answer or one error per id, in order; the whole call raises Unavailable (503)."""
        champion = self.require_champion()
        unique = list(dict.fromkeys(user_ids))
        rows = self.reader.read(unique, champion.feature_service)
        outcomes: dict[str, dict[str, Any] | ServingError] = {}
        scored: list[tuple[str, dict[str, Any]]] = []
        for user_id in unique:
            try:
                scored.append((user_id, split_lookup(user_id, rows[user_id])))
            except ServingError as exc:
                outcomes[user_id] = exc
        if scored:
            try:
                probabilities, reasons = scored_reasons(champion.model, [features for _, features in scored])
            except Exception as exc:
                logger.exception("model %s failed on a batch of %d", champion.tag, len(scored))
                raise Unavailable("model", f"{champion.tag} failed: {exc}") from exc
            now = self.clock()
            log_rows = []
            for (user_id, features), probability, why in zip(scored, probabilities, reasons, strict=True):
                outcomes[user_id] = answer(user_id, float(probability), champion, features, why)
                log_rows.append(LogRow(now, user_id, features, float(probability), champion.name, champion.version))
            if self.log is not None:
                self.log.submit(log_rows)
        return [outcomes[user_id] for user_id in user_ids]

    def features(self, user_id: str) -> dict[str, Any]:
        """The online features of the champion's FeatureService (the default service before one loads)."""
        champion = self.holder.champion
        feature_service = feature_service_or_default(champion.feature_service if champion else None)
        values = split_lookup(user_id, self.reader.read([user_id], feature_service)[user_id])
        return {"user_id": user_id, "feature_service": feature_service, "features": values}


class MicroBatcher:
    """Coalesces concurrent single-id requests into one `ChurnScorer.score` call in a worker thread.

    No timer: while one batch is scored, new requests queue up and form the next batch, so a lone
    request pays no wait and a busy service scores many ids per model call.
    """

    def __init__(
        self,
        score: Callable[[list[str]], list[dict[str, Any] | ServingError]],
        max_batch: int = MAX_COALESCED,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.score = score
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")

    async def submit(self, user_id: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._consume())
        future: asyncio.Future = loop.create_future()
        await self._queue.put((user_id, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError as exc:
            raise Unavailable("model", f"no answer within {self.timeout_s:.0f}s") from exc

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            ids = [user_id for user_id, _ in batch]
            try:
                outcomes: list[Any] = await loop.run_in_executor(self._executor, self.score, ids)
            except Exception as exc:
                outcomes = [exc] * len(batch)
            self.batches += 1
            self.items += len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
