"""A month's training rows, split and sampled as they stream by.

At ten million users a month the training set does not fit a task twice over, and a larger fit
adds nothing beyond a few hundred thousand rows (README "Scale": the holdout AUC against the
sample size). `TrainingSplit` takes the month's point-in-time rows a chunk at a time and keeps:

* every row of the evaluation holdout (config/holdout.py): champion and challenger are compared
  on all of them, as before; given a directory they go to a Parquet file there as they come
  (model/holdout_rows.py), else they stay in memory;
* a seeded sample of at most `max_rows` of the other rows: the rows with the smallest seeded hash
  of their user_id, so the sample depends on the seed and the ids only, not on the chunk size or
  the order the rows came in; with `max_rows` at least the month's rows it is all of them.

Both come out ordered by user_id, the order the whole-month split gives (model/training.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from streamflow_mlops.config.holdout import EVAL_HOLDOUT_SHARE, is_eval_holdout
from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.model.holdout_rows import HoldoutRows, HoldoutWriter

HOLDOUT_FILE = "evaluation_rows.parquet"

_PRIORITY = "_sample_priority"


def sample_priority(user_ids: pd.Series, seed: int) -> np.ndarray:
    """A seeded 64-bit hash per user id (pandas' SipHash of the UTF-8 id, keyed by the seed)."""
    key = f"{int(seed) & 0xFFFFFFFFFFFF:016x}"
    return pd.util.hash_array(user_ids.to_numpy(dtype=object), hash_key=key, categorize=False)


@dataclass
class HashSample:
    """The `max_rows` rows with the smallest seeded hash of their user_id among all rows added,
    kept in bounded memory (at most 2 x max_rows + one chunk): the same rows whatever the chunks."""

    seed: int
    max_rows: int
    rows_seen: int = 0
    _kept: list[pd.DataFrame] = field(default_factory=list)
    _kept_rows: int = 0

    def add(self, chunk: pd.DataFrame) -> None:
        self.rows_seen += len(chunk)
        self._kept.append(chunk.assign(**{_PRIORITY: sample_priority(chunk[ENTITY], self.seed)}))
        self._kept_rows += len(chunk)
        # Trim once the kept rows pass twice the sample: each row is compared a bounded number of times.
        if self._kept_rows > 2 * self.max_rows:
            self._trim()

    def _trim(self) -> None:
        kept = pd.concat(self._kept, ignore_index=True)
        if len(kept) > self.max_rows:
            smallest = np.argpartition(kept[_PRIORITY].to_numpy(), self.max_rows - 1)[: self.max_rows]
            kept = kept.iloc[np.sort(smallest)]
        self._kept, self._kept_rows = [kept], len(kept)

    def frame(self) -> pd.DataFrame:
        """The sample ordered by user_id (all rows when no more than `max_rows` were added)."""
        self._trim()
        return _by_user(self._kept[0].drop(columns=_PRIORITY))


@dataclass
class TrainingSplit:
    """Accumulates a month's rows into (training sample, evaluation rows) in bounded memory: the
    evaluation rows go to `directory` (a Parquet file) when one is given."""

    seed: int
    max_rows: int
    share: float = EVAL_HOLDOUT_SHARE
    directory: Path | None = None
    _train: HashSample = field(init=False)
    _val: list[pd.DataFrame] = field(default_factory=list)
    _writer: HoldoutWriter | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._train = HashSample(self.seed, self.max_rows)
        if self.directory is not None:
            self._writer = HoldoutWriter(Path(self.directory) / HOLDOUT_FILE)

    def add(self, chunk: pd.DataFrame) -> None:
        held_out = is_eval_holdout(chunk[ENTITY], self.share)
        if self._writer is not None:
            self._writer.add(chunk[held_out])
        else:
            self._val.append(chunk[held_out])
        self._train.add(chunk[~held_out])

    def frames(self) -> tuple[pd.DataFrame, HoldoutRows]:
        """(training sample, evaluation rows), each ordered by user_id."""
        if self._writer is not None:
            return self._train.frame(), self._writer.close()
        return self._train.frame(), HoldoutRows.of(_by_user(pd.concat(self._val, ignore_index=True)))

    @property
    def training_rows_seen(self) -> int:
        return self._train.rows_seen


def _by_user(frame: pd.DataFrame) -> pd.DataFrame:
    if frame[ENTITY].is_monotonic_increasing:
        return frame.reset_index(drop=True)
    return frame.sort_values(ENTITY, kind="stable", ignore_index=True)
