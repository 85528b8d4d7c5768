"""The fitted sklearn pipeline as numpy arrays: the same arithmetic without sklearn's per-call overhead.

compile_pipeline() turns a fitted pipeline (imputer, scaler, one-hot, splines, logistic/HGB) into an
ArrayPipeline, or None when a step has no array equivalent; the service then scores through the
pipeline itself. Equality with predict_proba is checked at load on the model's input example."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamflow_mlops.model.reasons import linear_contributions, transformer_steps

logger = logging.getLogger(__name__)


class ProbabilityModel(Protocol):
    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray: ...


class PipelineModel:
    """An sklearn pipeline scored on plain dict rows, single-threaded.

    When the pipeline has a shape `compile_pipeline` knows, rows go through its numpy-only
    equivalent (`fast`); otherwise, or when that equivalent disagrees with the pipeline on a
    check rows (`verify`), through one DataFrame per batch and the pipeline itself.
    """

    def __init__(self, pipeline: Any, columns: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.columns = list(columns)
        # Thread pools inside one request cost more than they give on a single row
        # (docs/decisions.md), and the service already runs requests side by side.
        single_threaded = {name: 1 for name in pipeline.get_params(deep=True) if name.endswith("n_jobs")}
        if single_threaded:
            pipeline.set_params(**single_threaded)
        self.fast = compile_pipeline(pipeline)
        self.explainer = linear_contributions(pipeline)

    def verify(self, rows: Sequence[Mapping[str, Any]]) -> bool:
        """Keep the fast path only if it gives the pipeline's probabilities bit for bit on `rows`."""
        if self.fast is None:
            return False
        expected = self.frame_predict_proba(rows)
        try:
            same = bool(np.array_equal(self.fast.predict_proba(rows), expected))
        except Exception:
            logger.warning("array scoring failed on check rows; scoring through the pipeline", exc_info=True)
            same = False
        if not same:
            logger.warning("array scoring differs from the pipeline on check rows; scoring through the pipeline")
            self.fast = None
        return same

    def frame_predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        import pandas as pd

        frame = pd.DataFrame({column: [row[column] for row in rows] for column in self.columns})
        return self.pipeline.predict_proba(frame)[:, 1]

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.fast is not None:
            return self.fast.predict_proba(rows)
        return self.frame_predict_proba(rows)

    def explain(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict_proba(rows)` and, for a linear model, each feature's contribution to the logit
        (rows x `explainer.features`, model/reasons.py) from the same encoded rows; None otherwise."""
        if self.explainer is None:
            return self.predict_proba(rows), None
        if self.fast is not None:
            encoded = self.fast.transform(rows)
            return self.fast.scores(encoded), self.explainer.contributions(encoded)
        import pandas as pd

        return self.explain_frame(pd.DataFrame({column: [row[column] for row in rows] for column in self.columns}))

    def explain_frame(self, frame: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """`explain` on a DataFrame (batch scoring): the pipeline's own transform and classifier,
        so the probabilities are its predict_proba's; contributions from the same encoded array."""
        if self.explainer is None:
            return self.pipeline.predict_proba(frame[self.columns])[:, 1], None
        encoded = self.pipeline[:-1].transform(frame[self.columns])
        probabilities = self.pipeline[-1].predict_proba(encoded)[:, 1]
        return probabilities, self.explainer.contributions(encoded)


ArrayStep = Callable[["np.ndarray"], "np.ndarray"]


@dataclass(frozen=True)
class ArrayBranch:
    """One ColumnTransformer branch as array code: its input columns, how rows become its input, its steps."""

    columns: tuple[str, ...]
    encode: Callable[[Sequence[Mapping[str, Any]], tuple[str, ...]], np.ndarray]
    steps: tuple[ArrayStep, ...]

    def transform(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        values = self.encode(rows, self.columns)
        for step in self.steps:
            values = step(values)
        return values


@dataclass(frozen=True)
class ArrayPipeline:
    """A fitted `Pipeline(ColumnTransformer, ..., classifier)` scored from dict rows with numpy only.

    sklearn's ColumnTransformer pays a DataFrame build, column selection, validation and joblib
    dispatch per branch on every one-row call; the same encoding as arrays skips all of it
    (docs/decisions.md has the figures). Imputer, scaler and one-hot steps are rewritten with the same float
    operations, any other step's own fitted `transform` runs on the array, and the fitted
    classifier scores the result, so the probabilities are the pipeline's own.
    """

    branches: tuple[ArrayBranch, ...]
    steps: tuple[ArrayStep, ...]
    classifier: Any
    scores: Callable[[np.ndarray], np.ndarray]

    def transform(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        values = np.hstack([branch.transform(rows) for branch in self.branches])
        for step in self.steps:
            values = step(values)
        return values

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.scores(self.transform(rows))


def float_rows(rows: Sequence[Mapping[str, Any]], columns: tuple[str, ...]) -> np.ndarray:
    # None becomes NaN, as in the DataFrame the pipeline would have seen.
    return np.array([[row[column] for column in columns] for row in rows], dtype=np.float64)


def one_hot_rows(encoder: Any) -> Callable[[Sequence[Mapping[str, Any]], tuple[str, ...]], np.ndarray] | None:
    """A fitted OneHotEncoder (no drop, no infrequent grouping) as dict lookups, else None."""
    if getattr(encoder, "drop_idx_", None) is not None or getattr(encoder, "_infrequent_enabled", False):
        return None
    positions: list[dict[Any, int]] = []
    offset = 0
    for categories in encoder.categories_:
        values = categories.tolist()
        # NaN/None categories don't compare equal to themselves in a dict; leave them to sklearn.
        if any(value is None or value != value for value in values):
            return None
        positions.append({value: offset + index for index, value in enumerate(values)})
        offset += len(values)
    width, dtype, strict = offset, encoder.dtype, encoder.handle_unknown == "error"

    def encode(rows: Sequence[Mapping[str, Any]], columns: tuple[str, ...]) -> np.ndarray:
        out = np.zeros((len(rows), width), dtype=dtype)
        for i, row in enumerate(rows):
            for lookup, column in zip(positions, columns, strict=True):
                j = lookup.get(row[column])
                if j is not None:
                    out[i, j] = 1
                elif strict:
                    raise ValueError(f"unknown category {row[column]!r} in {column}")
        return out

    return encode


def array_step(step: Any) -> ArrayStep:
    """A fitted array-in, array-out step: imputer and scaler as numpy, anything else its own transform."""
    import copy

    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    if isinstance(step, SimpleImputer):
        missing = step.missing_values
        statistics = step.statistics_
        if isinstance(missing, float) and missing != missing and not step.add_indicator:
            if not np.isnan(statistics).any():
                return lambda values: np.where(np.isnan(values), statistics, values)
    if type(step) is StandardScaler:
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def standardize(values: np.ndarray) -> np.ndarray:
            # The same two operations, in the same order, as StandardScaler.transform.
            if mean is not None:
                values = values - mean
            if scale is not None:
                values = values / scale
            return values

        return standardize
    spline = spline_step(step)
    if spline is not None:
        return spline
    if hasattr(step, "feature_names_in_"):
        # Fitted on a DataFrame: called on an array it would warn on every call; the names are
        # checked once here instead, by the caller's column order.
        step = copy.copy(step)
        del step.feature_names_in_
    return step.transform


def spline_step(step: Any) -> ArrayStep | None:
    """A fitted dense SplineTransformer with linear or constant extrapolation, else None.

    SplineTransformer.transform re-validates its input and re-evaluates every spline and its slope
    at both boundaries on each call (five scipy calls per feature); those boundary values are
    constants of the fitted splines, so they are evaluated once here, by the same calls, and each
    transform evaluates only the in-range splines and repeats sklearn's extrapolation arithmetic.
    """
    from sklearn.preprocessing import SplineTransformer

    if type(step) is not SplineTransformer or step.sparse_output or step.extrapolation not in ("linear", "constant"):
        return None
    if step.degree < 2:
        # sklearn bumps its loop's `degree` for linear extrapolation of degree <= 1 and the bump
        # carries into the next features' boundaries; left to sklearn rather than copied.
        return None
    degree, n_splines = step.degree, step.bsplines_[0].c.shape[1]
    n_out = step.n_features_out_ + len(step.bsplines_) * (1 - step.include_bias)
    kept = None if step.include_bias else [j for j in range(n_out) if (j + 1) % n_splines != 0]
    linear = step.extrapolation == "linear"
    splines = []
    for spl in step.bsplines_:
        xmin, xmax = spl.t[degree], spl.t[-degree - 1]
        slopes = (spl(xmin, nu=1), spl(xmax, nu=1)) if linear else (None, None)
        splines.append((spl, xmin, xmax, spl(xmin), spl(xmax), *slopes))
    allow_nan = step.handle_missing == "zeros"

    def transform(values: np.ndarray) -> np.ndarray:
        if not allow_nan and not np.isfinite(values).all():
            raise ValueError("Input X contains NaN or infinity.")
        out = np.zeros((values.shape[0], n_out), dtype=values.dtype, order=step.order)
        for i, (spl, xmin, xmax, f_min, f_max, fp_min, fp_max) in enumerate(splines):
            x = values[:, i]
            first = i * n_splines
            inside = (xmin <= x) & (x <= xmax)
            out[inside, first : first + n_splines] = spl(x[inside])
            below, above = x < xmin, x > xmax
            if not linear:
                if below.any():
                    out[below, first : first + degree] = f_min[:degree]
                if above.any():
                    out[above, first + n_splines - degree : first + n_splines] = f_max[-degree:]
                continue
            for j in range(degree):
                if below.any():
                    out[below, first + j] = f_min[j] + (x[below] - xmin) * fp_min[j]
                if above.any():
                    k = n_splines - 1 - j
                    out[above, first + k] = f_max[k] + (x[above] - xmax) * fp_max[k]
        return out if kept is None else out[:, kept]

    return transform


def classifier_scores(classifier: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Positive-class probabilities of a fitted classifier on an encoded array.

    A binary LogisticRegression is its own formula (the products, sum and expit its
    predict_proba computes, without the input validation, half of its cost on one row);
    any other classifier is asked through its predict_proba.
    """
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression

    if type(classifier) is LogisticRegression and len(classifier.classes_) == 2:
        weights, intercept = classifier.coef_.T, classifier.intercept_

        def logistic(values: np.ndarray) -> np.ndarray:
            scores = values @ weights + intercept
            return expit(scores.reshape(-1))

        return logistic
    return lambda values: classifier.predict_proba(values)[:, 1]


def compile_pipeline(pipeline: Any) -> ArrayPipeline | None:
    """The numpy-only equivalent of a fitted `Pipeline(ColumnTransformer, ..., classifier)`, or None."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    steps = [step for _, step in getattr(pipeline, "steps", []) if step not in (None, "passthrough")]
    if len(steps) < 2 or not isinstance(steps[0], ColumnTransformer) or not hasattr(steps[-1], "predict_proba"):
        return None
    columns_transformer, classifier = steps[0], steps[-1]
    if getattr(classifier, "feature_names_in_", None) is not None or columns_transformer.sparse_output_:
        return None  # DataFrames (set_output) or sparse matrices handed along: not this shape
    names = list(getattr(columns_transformer, "feature_names_in_", []))
    branches = []
    for _, transformer, selection in columns_transformer.transformers_:
        selected = list(selection) if isinstance(selection, list | tuple | np.ndarray) else None
        if selected is None or any(isinstance(item, bool | np.bool_) for item in selected):
            return None
        if transformer == "drop" or not selected:
            continue
        columns = tuple(names[item] if isinstance(item, int | np.integer) else item for item in selected)
        if not all(isinstance(column, str) for column in columns):
            return None
        branch_steps = transformer_steps(transformer)
        encode: Callable[[Sequence[Mapping[str, Any]], tuple[str, ...]], np.ndarray] | None = float_rows
        if branch_steps and isinstance(branch_steps[0], OneHotEncoder):
            encode = one_hot_rows(branch_steps.pop(0))
            if encode is None:
                return None
        branches.append(ArrayBranch(columns, encode, tuple(array_step(step) for step in branch_steps)))
    if not branches:
        return None
    middle = tuple(array_step(step) for step in steps[1:-1])
    return ArrayPipeline(tuple(branches), middle, classifier, classifier_scores(classifier))
