"""A month's evaluation rows, in memory or in a local Parquet file, read a batch at a time.

The evaluation holdout is a fifth of the month, too large for a task to hold whole once copied for
scoring, logging and comparing (docs/decisions.md, "Scale on one machine"). Streamed from
Feast it goes to a Parquet file a chunk at a time (`HoldoutWriter`), and everything that needs it
(scoring either model, the validation artifact, the ceiling, the model card) reads it back in
batches of `STREAMFLOW_CHUNK_ROWS` or one column at a time, so a task holds one batch of rows and
a few arrays of one number per row. Small months and tests hold it in memory (`HoldoutRows.of`):
the same interface, the same results.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.config.settings import DEFAULT_CHUNK_ROWS


class HoldoutRows:
    """The evaluation rows, ordered by user_id: a pandas frame or a Parquet file."""

    def __init__(self, frame: pd.DataFrame | None = None, path: Path | None = None):
        if (frame is None) == (path is None):
            raise ValueError("evaluation rows are a frame or a file, not both")
        self._frame = frame
        self.path = path

    @classmethod
    def of(cls, frame: pd.DataFrame) -> HoldoutRows:
        return cls(frame=frame.reset_index(drop=True))

    @classmethod
    def read(cls, path: Path | str) -> HoldoutRows:
        return cls(path=Path(path))

    def _file(self) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path)

    @property
    def rows(self) -> int:
        return len(self._frame) if self._frame is not None else self._file().metadata.num_rows

    @property
    def columns(self) -> list[str]:
        return list(self._frame.columns) if self._frame is not None else list(self._file().schema_arrow.names)

    def __len__(self) -> int:
        return self.rows

    def batches(self, columns: list[str] | None = None, batch_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        """The rows (only `columns`, when given) in order, at most `batch_rows` at a time."""
        if self._frame is not None:
            for start in range(0, len(self._frame), batch_rows):
                batch = self._frame.iloc[start : start + batch_rows]
                yield batch if columns is None else batch[columns]
            return
        for batch in self._file().iter_batches(batch_size=batch_rows, columns=columns):
            yield batch.to_pandas()

    def column(self, name: str) -> np.ndarray:
        """One column, whole (one number per row: labels, scores)."""
        if self._frame is not None:
            return self._frame[name].to_numpy()
        return self._file().read(columns=[name]).column(0).to_numpy()

    def arrow_column(self, name: str) -> Any:
        """One column as an Arrow array: user ids take a few bytes each instead of a Python string."""
        import pyarrow as pa

        if self._frame is not None:
            return pa.chunked_array([pa.array(self._frame[name])])
        return self._file().read(columns=[name]).column(0)

    def head(self, rows: int) -> pd.DataFrame:
        if self._frame is not None:
            return self._frame.head(rows)
        if rows > 0:
            for batch in self.batches(batch_rows=rows):
                return batch
        return self._file().schema_arrow.empty_table().to_pandas()

    def frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All rows at once: for small months, tests and benchmarks."""
        if self._frame is not None:
            return self._frame if columns is None else self._frame[columns]
        return self._file().read(columns=columns).to_pandas()

    def write(
        self, path: Path, extra: dict[str, np.ndarray] | None = None, batch_rows: int = DEFAULT_CHUNK_ROWS
    ) -> None:
        """The rows, with `extra` columns of one value per row appended, to a Parquet file, a batch at a time."""
        writer = HoldoutWriter(path)
        start = 0
        for batch in self.batches(batch_rows=batch_rows):
            stop = start + len(batch)
            writer.add(batch.assign(**{name: values[start:stop] for name, values in (extra or {}).items()}))
            start = stop
        if start == 0:
            writer.add(self.head(0).assign(**{name: values[:0] for name, values in (extra or {}).items()}))
        writer.close()


class HoldoutWriter:
    """Appends frames of one schema (the first non-empty frame's columns and types) to a Parquet file.

    The rows should come ordered by user_id, as Feast's retrieval streams them: a source out of
    order is sorted at `close`, which reads the file back whole."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._writer: Any = None
        self._template: pd.DataFrame | None = None
        self._last: str | None = None
        self.ordered = True

    def add(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._template is None:
            self._template = frame.iloc[:0]
        if frame.empty:
            return
        ids = frame[ENTITY]
        if not ids.is_monotonic_increasing or (self._last is not None and ids.iloc[0] <= self._last):
            self.ordered = False
        self._last = ids.iloc[-1]
        schema = None if self._writer is None else self._writer.schema
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)

    def close(self) -> HoldoutRows:
        if self._writer is not None:
            self._writer.close()
        elif self._template is not None:
            self._template.to_parquet(self.path, index=False)
        else:
            raise ValueError(f"no rows, not even their columns, were written to {self.path}")
        if not self.ordered:
            frame = pd.read_parquet(self.path)
            frame.sort_values(ENTITY, kind="stable", ignore_index=True).to_parquet(self.path, index=False)
        return HoldoutRows.read(self.path)
