"""Validating a CSV chunk by chunk with the outcome of validating it whole.

A file is read `chunk_rows` rows at a time (its digest block by block) and Great Expectations,
set up once per validation, checks every chunk; `validation_merge` turns the chunks' results into
the whole file's. What no chunk knows is kept compact: ids as sorted 64-bit hashes (`IdHashes`),
for users.csv's ids (the orphan check) and a file's repeated ids (the unique check across chunks,
found by a first pass and fed to a second one, which only a file with repeated ids needs).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamflow_mlops.config.schema import ENTITY
from streamflow_mlops.data.validation_merge import RESULT_FORMAT, ChunkResult, merged_file_result

TEXT_VIEW, VALUES_VIEW = "text", "values"
NO_IDS = np.empty(0, dtype=np.uint64)


class UnreadableFile(Exception):
    """A CSV that pandas cannot read as text; the message is the problem as reasons show it.

    `stream_order` says which of two problems a read of the whole file meets first: a malformed
    line is tokenized before the next undecodable block is decoded, then lines come in order."""

    def __init__(self, message: str, stream_order: tuple[int, int] = (0, 0)) -> None:
        super().__init__(message)
        self.stream_order = stream_order


def text_chunks(path: Path, chunk_rows: int, first_chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """The CSV as text frames of at most `chunk_rows` rows (the first of `first_chunk_rows`, when
    given), labelled by their position in the file; empty cells become null, nothing else is
    interpreted. A header-only file gives one empty frame; a bad line or byte raises
    `UnreadableFile` when its chunk is reached."""
    if not path.is_file():
        raise UnreadableFile(f"{path.name} is missing")
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is harmless, not part of the header.
        # low_memory=False: each chunk is tokenized in one go, so only a chunk's first row goes
        # unchecked (see `first_rows_problem`), not also rows at pandas' internal batch edges.
        with pd.read_csv(
            path,
            chunksize=chunk_rows,
            iterator=True,
            low_memory=False,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="utf-8-sig",
        ) as reader:
            first = [reader.get_chunk(first_chunk_rows)] if first_chunk_rows else []
            start = 0
            for chunk in itertools.chain(first, reader):
                # Row labels are file positions, even when pandas takes a first column as the index
                # (a first row longer than the header): merging puts samples in file order by them.
                chunk.index = pd.RangeIndex(start, start + len(chunk))
                start += len(chunk)
                yield chunk
    except pd.errors.EmptyDataError as exc:
        raise UnreadableFile(f"{path.name} is empty (no header)") from exc
    except pd.errors.ParserError as exc:
        line = re.search(r"(?:line|row) (\d+)", str(exc))
        order = (0, int(line.group(1)) if line else 0)
        raise UnreadableFile(f"{path.name} is not a valid UTF-8 CSV: {exc}", order) from exc
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path.name} is not a valid UTF-8 CSV: {exc}", (1, 0)) from exc


def reading_problem(path: Path, chunk_rows: int, first_chunk_rows: int | None = None) -> UnreadableFile | None:
    """Why the file cannot be read in these chunks, or None; the frames are dropped as they come."""
    try:
        for _ in text_chunks(path, chunk_rows, first_chunk_rows):
            pass
    except UnreadableFile as exc:
        return exc
    return None


def first_rows_problem(path: Path, chunk_rows: int) -> UnreadableFile | None:
    """A malformed line the chunked read cannot see: pandas' C parser does not check the first row
    of each chunk against the header, a longer row is cut to the header's width without a word
    (pandas issue #11569, open in pandas 2.x; a whole-file read has the same hole every 131,072 or
    262,144 rows). The same file read with chunks starting one row later checks exactly those
    rows, so between the two every row but the first is checked (a first row longer than the
    header is pandas' implicit index, as in a whole-file read)."""
    return reading_problem(path, chunk_rows, first_chunk_rows=1)


def earliest_problem(*problems: UnreadableFile | None) -> UnreadableFile | None:
    """The problem a whole-file read meets first (the earlier reader's on a tie)."""
    found = [p for p in problems if p is not None]
    return min(found, key=lambda p: p.stream_order) if found else None


def file_sha256(path: Path) -> str | None:
    """The file's digest, read block by block (never whole into memory); None when it is missing."""
    if not path.is_file():
        return None
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def hash_ids(ids: pd.Series) -> np.ndarray:
    """64-bit hashes of ids (pandas' seeded hash of the text; the same text, the same hash).
    Not categorized first: ids are nearly all distinct, so factorizing them would only cost time."""
    return pd.util.hash_array(ids.to_numpy(dtype=object), categorize=False)


@dataclass(frozen=True)
class IdHashes:
    """A set of ids as a sorted uint64 array of their hashes: 8 bytes an id (80 MB for 10M users,
    against ~1 GB for a Python set of the strings), looked up by binary search.

    Two different ids share a hash with probability 2^-64. Over a month of n users and m rows per
    table, the chance that any orphan hides behind some user's hash is about n*m/2^64 (5e-6 for
    10M x 10M), and that two different ids of a file are taken for a duplicate about n^2/2^65.
    """

    hashes: np.ndarray = field(default_factory=lambda: NO_IDS)

    @classmethod
    def of(cls, ids: pd.Series) -> IdHashes:
        return cls(np.sort(hash_ids(ids.dropna())))

    @classmethod
    def sorting(cls, hashes: np.ndarray) -> IdHashes:
        """The set of these hashes, sorted in place (no copy: at 10M rows a copy is 80 MB more)."""
        hashes.sort()
        return cls(hashes)

    def __len__(self) -> int:
        return len(self.hashes)

    def contains(self, ids: pd.Series) -> np.ndarray:
        """Per row: is its id in the set (a null id never is)."""
        found = np.zeros(len(ids), dtype=bool)
        present = ids.notna().to_numpy()
        if len(self.hashes) and present.any():
            wanted = hash_ids(ids[present])
            at = np.minimum(np.searchsorted(self.hashes, wanted), len(self.hashes) - 1)
            found[present] = self.hashes[at] == wanted
        return found


def repeated_ids(ids: IdHashes) -> IdHashes:
    """The ids that occur more than once in a file, from the hashes of all its ids."""
    ordered = ids.hashes
    return IdHashes(np.unique(ordered[1:][ordered[1:] == ordered[:-1]]))


def in_other_chunk(ids: pd.Series, repeated: IdHashes) -> pd.Series:
    """The id of each row whose id is repeated in the file but not in this chunk, null otherwise:
    its twin is in another chunk. Repeats inside the chunk are GE's unique check, so the two never
    count the same row."""
    if not len(repeated):
        return pd.Series(pd.NA, index=ids.index, dtype=object)
    return ids.where(repeated.contains(ids) & ~ids.duplicated(keep=False).to_numpy())


class ChunkValidator:
    """GE set up once per validation: one context, and one asset and batch definition per view, not
    per table or chunk (each new asset re-saves the context's config, measured ~60 ms)."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas("streamflow_drop")
        self.batch_definitions = {
            view: source.add_dataframe_asset(view).add_batch_definition_whole_dataframe("whole")
            for view in (TEXT_VIEW, VALUES_VIEW)
        }

    def validate(
        self, suites: dict[str, Any], params: dict[str, Any], text: pd.DataFrame, values: pd.DataFrame
    ) -> ChunkResult:
        """GE's results on one chunk: the text view's suite on `text`, the values view's on `values`."""
        results = []
        for view, frame in ((TEXT_VIEW, text), (VALUES_VIEW, values)):
            batch = self.batch_definitions[view].get_batch(batch_parameters={"dataframe": frame})
            outcome = batch.validate(suites[view], result_format=RESULT_FORMAT, expectation_parameters=params)
            results += outcome.to_json_dict()["results"]
        return ChunkResult(results, {c: values[c].dtype for c in values if values[c].dtype.kind in "iuf"})


@dataclass(frozen=True)
class FileCheck:
    """What validating one file takes besides its rows: its suite per view, GE's parameters, and
    how a chunk's values view is made, given the ids repeated in the file."""

    suite: str
    file: str
    suites: dict[str, Any]
    params: dict[str, Any]
    values_view: Callable[[pd.DataFrame, IdHashes], pd.DataFrame]


@dataclass
class FileValidation:
    """One file's GE result merged over its chunks, how many rows and chunks, or why it was unreadable."""

    result: dict[str, Any]
    row_count: int
    chunks: int
    problem: str | None = None


def judged_unreadable(check: FileCheck, validator: ChunkValidator, problem: UnreadableFile) -> FileValidation:
    """A file that could not be read, judged as one with no rows, whatever chunks went before."""
    empty = pd.DataFrame()
    unread = validator.validate(check.suites, check.params, empty, check.values_view(empty, IdHashes()))
    return FileValidation(merged_file_result(check.suite, check.file, [unread]), 0, 1, str(problem))


def _validation_pass(
    check: FileCheck, path: Path, validator: ChunkValidator, chunk_rows: int, repeated: IdHashes
) -> tuple[FileValidation, np.ndarray]:
    """The file through GE chunk by chunk, and the hashes of its ids in file order."""
    chunks, hashes, rows = [], [], 0
    try:
        for text in text_chunks(path, chunk_rows):
            chunks.append(validator.validate(check.suites, check.params, text, check.values_view(text, repeated)))
            hashes.append(hash_ids(text[ENTITY].dropna()) if ENTITY in text else NO_IDS)
            rows += len(text)
    except UnreadableFile as exc:
        problem = exc
    else:
        merged = merged_file_result(check.suite, check.file, chunks)
        return FileValidation(merged, rows, len(chunks)), np.concatenate(hashes)
    # Outside the handler, so GE's own errors on the empty frame do not carry the parser's traceback.
    return judged_unreadable(check, validator, problem), NO_IDS


def validate_file(
    check: FileCheck, path: Path, validator: ChunkValidator, chunk_rows: int
) -> tuple[FileValidation, IdHashes]:
    """One CSV through its suite, `chunk_rows` rows at a time, with the outcome of the whole file;
    also the file's ids as hashes (8 bytes a row: a caller keeps only those it needs).

    The rows pandas leaves unchecked at chunk starts are checked first, by a cheaper read (no GE).
    Knowing which ids repeat across chunks takes the whole file, so a file whose ids repeat (a
    broken batch) is validated again, knowing them; a good file goes through GE once."""
    unchecked_rows = first_rows_problem(path, chunk_rows)
    if unchecked_rows is not None:
        problem = earliest_problem(reading_problem(path, chunk_rows), unchecked_rows)
        return judged_unreadable(check, validator, problem), IdHashes()
    first, file_hashes = _validation_pass(check, path, validator, chunk_rows, IdHashes())
    ids = IdHashes.sorting(file_hashes)
    repeated = repeated_ids(ids) if first.chunks > 1 else IdHashes()
    if first.problem or not len(repeated):
        return first, ids
    second, _ = _validation_pass(check, path, validator, chunk_rows, repeated)
    return second, ids
