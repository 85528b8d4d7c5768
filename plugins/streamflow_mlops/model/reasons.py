"""Reason codes: each feature's exact share of a linear model's logit, and the top features raising the risk.

For a `Pipeline(ColumnTransformer, LogisticRegression)` (the default `spline_logreg`, and plain
`logreg`) the logit is a sum over encoded columns, `logit = intercept + sum_j w_j * z_j`, and every
encoded column comes from exactly one input feature (a numeric feature's spline basis, a
categorical's one-hot columns). A feature's contribution is the sum over its own columns, measured
from a documented reference user:

    contribution_f = sum_{j in f} w_j * (z_j - r_j)        baseline_logit = intercept + sum_j w_j * r_j

with `r_j = 0` for a standardized column (the scaler centres it: the training mean of that spline
basis or value) and `r_j = 1/K` for one of a categorical's K one-hot columns (a uniform mix of its
categories). So `baseline_logit + sum_f contribution_f == logit` exactly (up to float rounding),
and a positive contribution means "this feature's value makes this user riskier than the
reference user". Nothing is approximated.

Tree models (`hgb`, `rf`) have no such decomposition: they get no reason codes (an empty list)
rather than an approximation that would look as exact as the linear ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A retention agent reads a few reasons per user; past three they repeat the model's whole story.
TOP_REASONS = 3


@dataclass(frozen=True)
class LogitContributions:
    """How a fitted linear pipeline's encoded columns add up to its logit, feature by feature."""

    features: tuple[str, ...]
    # groups[j, f] = 1 when encoded column j comes from feature f.
    groups: np.ndarray
    weights: np.ndarray
    references: np.ndarray
    intercept: float
    # The weights folded into the grouping and the reference user's share per feature: one matrix
    # product per call and no rows x columns temporaries, on one row or a million.
    weighted: np.ndarray = field(init=False, repr=False)
    reference_share: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        weighted = self.weights[:, None] * self.groups
        object.__setattr__(self, "weighted", weighted)
        object.__setattr__(self, "reference_share", self.references @ weighted)

    @property
    def baseline_logit(self) -> float:
        """The logit of the reference user (every contribution zero)."""
        return float(self.intercept + self.weights @ self.references)

    def contributions(self, encoded: np.ndarray) -> np.ndarray:
        """Per-row, per-feature contributions to the logit (rows x features, in `features` order)."""
        return encoded @ self.weighted - self.reference_share

    def logits(self, encoded: np.ndarray) -> np.ndarray:
        return encoded @ self.weights + self.intercept


def transformer_steps(transformer: Any) -> list[Any]:
    """A ColumnTransformer branch's steps in order: none for passthrough, a Pipeline's own steps."""
    from sklearn.pipeline import Pipeline

    if transformer == "passthrough":
        return []
    if isinstance(transformer, Pipeline):
        return [step for _, step in transformer.steps if step not in (None, "passthrough")]
    return [transformer]


def _branch_widths(steps: Sequence[Any], n_features: int) -> tuple[list[int], list[bool]] | None:
    """Encoded columns per input feature of one ColumnTransformer branch, and whether each
    feature's columns are one-hot; None when a step mixes features or its width is unknown."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, SplineTransformer, StandardScaler

    widths, one_hot = [1] * n_features, [False] * n_features
    for step in steps:
        if isinstance(step, SimpleImputer) and not step.add_indicator:
            continue
        if type(step) is StandardScaler:
            continue
        if type(step) is OneHotEncoder:
            if getattr(step, "drop_idx_", None) is not None or getattr(step, "_infrequent_enabled", False):
                return None
            widths, one_hot = [len(c) for c in step.categories_], [True] * n_features
            continue
        if type(step) is SplineTransformer and widths == [1] * n_features:
            per_feature = step.n_features_out_ // n_features
            if per_feature * n_features != step.n_features_out_:
                return None
            widths = [per_feature] * n_features
            continue
        return None
    return widths, one_hot


def linear_contributions(pipeline: Any) -> LogitContributions | None:
    """The exact decomposition of a fitted `Pipeline(ColumnTransformer, LogisticRegression)`'s
    logit by input feature, or None for any other shape (trees, extra middle steps, sparse)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression

    steps = [step for _, step in getattr(pipeline, "steps", []) if step not in (None, "passthrough")]
    if len(steps) != 2 or not isinstance(steps[0], ColumnTransformer):
        return None
    columns, classifier = steps
    if type(classifier) is not LogisticRegression or len(classifier.classes_) != 2 or columns.sparse_output_:
        return None
    names = list(getattr(columns, "feature_names_in_", []))
    weights = classifier.coef_.reshape(-1).astype(np.float64)
    groups = np.zeros((len(weights), len(names)))
    references = np.zeros(len(weights))
    for name, transformer, selection in columns.transformers_:
        if transformer == "drop":
            continue
        selected = [names[s] if isinstance(s, int | np.integer) else s for s in list(selection)]
        if not selected:
            continue
        branch_steps = transformer_steps(transformer)
        shape = _branch_widths(branch_steps, len(selected))
        output = columns.output_indices_[name]
        if shape is None or sum(shape[0]) != output.stop - output.start:
            return None
        start = output.start
        for feature, width, one_hot in zip(selected, *shape, strict=True):
            groups[start : start + width, names.index(feature)] = 1.0
            if one_hot:
                references[start : start + width] = 1.0 / width
            start += width
    if groups.sum(axis=1).min() != 1.0:
        return None
    return LogitContributions(tuple(names), groups, weights, references, float(classifier.intercept_[0]))


def top_reason_indices(contributions: np.ndarray, k: int = TOP_REASONS) -> np.ndarray:
    """Per row, the columns of the k largest positive contributions, largest first; -1 pads rows
    with fewer than k positive ones. Ties keep the feature order (a stable sort)."""
    k = min(k, contributions.shape[1])
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
    positive = np.take_along_axis(contributions, order, axis=1) > 0
    return np.where(positive, order, -1)


def plain(value: Any) -> Any:
    """A feature value as a JSON scalar (numpy types unwrapped, NaN as None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def reasons_for(
    features: Sequence[str], values: Mapping[str, Any], contributions: np.ndarray, indices: np.ndarray
) -> list[dict[str, Any]]:
    """`[{feature, value, contribution}]` of one row, from its contributions and top indices."""
    return [
        {"feature": features[j], "value": plain(values[features[j]]), "contribution": float(contributions[j])}
        for j in indices
        if j >= 0
    ]


def json_literals(values: np.ndarray) -> np.ndarray:
    """JSON text of each value of one column (object array), vectorized by dtype: what
    `json.dumps` writes for each, with NaN as null."""
    if values.dtype == np.bool_:
        return np.where(values, "true", "false").astype(object)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(str).astype(object)
    if np.issubdtype(values.dtype, np.floating):
        text = np.array([repr(v) for v in values.tolist()], dtype=object)
        text[np.isnan(values)] = "null"
        return text
    # Strings, bools or numbers in an object column: few distinct values (categories), each once.
    literal = {value: json.dumps(plain(value)) for value in set(values.tolist())}
    return np.array([literal[value] for value in values.tolist()], dtype=object)


def reasons_json(
    features: Sequence[str], columns: Mapping[str, np.ndarray], contributions: np.ndarray, indices: np.ndarray
) -> np.ndarray:
    """The reasons of many rows as JSON text (churn_scores, the retention list), one per row,
    exactly what `json.dumps` of `reasons_for`'s list gives (contributions rounded).

    Built column-wise, a reason slot at a time: a per-row `json.dumps` was half of scoring a
    million users. Contributions are rounded to 4 decimals: full-precision floats are a third
    more text to write, and no reader ranks reasons beyond the fourth decimal.
    """
    rows, slots = indices.shape
    names = np.array([json.dumps(name) for name in features], dtype=object)
    items = []
    for slot in range(slots):
        column = indices[:, slot]
        value_text = np.empty(rows, dtype=object)
        contribution_text = np.empty(rows, dtype=object)
        for feature in np.unique(column[column >= 0]):
            at = np.flatnonzero(column == feature)
            value_text[at] = json_literals(np.asarray(columns[features[feature]])[at])
            rounded = np.round(contributions[at, feature], 4).tolist()
            contribution_text[at] = np.array([repr(v) for v in rounded], dtype=object)
        present = np.flatnonzero(column >= 0)
        item = np.empty(rows, dtype=object)
        item[present] = [
            f'{{"feature": {name}, "value": {value}, "contribution": {contribution}}}'
            for name, value, contribution in zip(
                names[column[present]], value_text[present], contribution_text[present], strict=True
            )
        ]
        items.append(item)
    text = np.full(rows, "[]", dtype=object)
    # Positive reasons come first, so a row with k reasons has them in slots 0..k-1.
    counts = (indices >= 0).sum(axis=1)
    for k in range(1, slots + 1):
        at = np.flatnonzero(counts == k)
        text[at] = ["[" + ", ".join(row) + "]" for row in zip(*(item[at] for item in items[:k]), strict=True)]
    return text
