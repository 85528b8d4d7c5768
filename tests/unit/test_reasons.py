"""Reason codes: exact per-feature logit contributions of the linear pipelines, their order, none for trees."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from streamflow_mlops.config.schema import FEATURE_NAMES
from streamflow_mlops.model.compiled import PipelineModel
from streamflow_mlops.model.reasons import reasons_json, top_reason_indices
from streamflow_mlops.serving.scoring import scored_reasons

COLUMNS = list(FEATURE_NAMES)


@functools.cache
def fitted(classifier: str) -> tuple[PipelineModel, pd.DataFrame]:
    from streamflow_mlops.model.training import build_pipeline, frame_from_tables
    from streamflow_mlops.synthetic.generate import DropSpec, build_drop

    spec = DropSpec(0, users=800, seed=3)
    frame = frame_from_tables(build_drop(spec)[0], spec.as_of)
    pipeline = build_pipeline(classifier, 0, COLUMNS).fit(frame[COLUMNS], frame["churn_label"])
    return PipelineModel(pipeline, COLUMNS), frame


@pytest.mark.parametrize("classifier", ["spline_logreg", "logreg"])
def test_contributions_and_baseline_sum_to_the_logit(classifier):
    model, frame = fitted(classifier)
    rows = frame[COLUMNS].to_dict("records")
    rows[0] = rows[0] | {"monthly_fee": 10_000.0, "net_service": "Satellite"}  # extrapolated, unseen category
    probabilities, contributions = model.explain(rows)
    assert np.array_equal(probabilities, model.pipeline.predict_proba(pd.DataFrame(rows))[:, 1])
    assert contributions.shape == (len(rows), len(COLUMNS))
    # Against the pipeline's own logit (decision_function): the extrapolated row's (~1e3) is beyond
    # what a probability carries back through logit(), hence a relative tolerance for it.
    logits = model.pipeline.decision_function(pd.DataFrame(rows))
    total = contributions.sum(axis=1) + model.explainer.baseline_logit
    np.testing.assert_allclose(total, logits, rtol=1e-12, atol=1e-9)
    frame_probabilities, frame_contributions = model.explain_frame(pd.DataFrame(rows))
    np.testing.assert_array_equal(frame_probabilities, probabilities)
    np.testing.assert_allclose(frame_contributions, contributions, rtol=0, atol=1e-12)


def test_the_slow_path_explains_the_same_as_the_compiled_one():
    model, frame = fitted("spline_logreg")
    rows = frame[COLUMNS].head(50).to_dict("records")
    fast_probabilities, fast_contributions = model.explain(rows)
    model_without_fast = PipelineModel(model.pipeline, COLUMNS)
    model_without_fast.fast = None
    probabilities, contributions = model_without_fast.explain(rows)
    np.testing.assert_array_equal(probabilities, fast_probabilities)
    np.testing.assert_allclose(contributions, fast_contributions, rtol=0, atol=1e-12)


def test_reasons_are_the_top_three_positive_contributions_largest_first():
    model, frame = fitted("spline_logreg")
    rows = frame[COLUMNS].head(200).to_dict("records")
    _, contributions = model.explain(rows)
    _, reasons = scored_reasons(model, rows)
    features = model.explainer.features
    for row, row_contributions, row_reasons in zip(rows, contributions, reasons, strict=True):
        expected = sorted((c, f) for f, c in zip(features, row_contributions, strict=True) if c > 0)[::-1][:3]
        assert [(r["contribution"], r["feature"]) for r in row_reasons] == expected
        assert all(r["value"] == row[r["feature"]] for r in row_reasons)
    assert any(len(r) == 3 for r in reasons)


def test_top_reason_indices_skip_non_positive_and_keep_feature_order_on_ties():
    contributions = np.array([[0.5, -1.0, 0.5, 2.0], [-0.1, -0.2, 0.0, -0.3]])
    assert top_reason_indices(contributions).tolist() == [[3, 0, 2], [-1, -1, -1]]


def test_reasons_json_rounds_contributions_and_unwraps_values():
    columns = {"a": np.array([1.5, 2.0]), "b": np.array(["x", "y"], dtype=object)}
    out = reasons_json(("a", "b"), columns, np.array([[0.123456, 1.0], [-1.0, -2.0]]), np.array([[1, 0], [-1, -1]]))
    assert out.tolist() == [
        '[{"feature": "b", "value": "x", "contribution": 1.0}, {"feature": "a", "value": 1.5, "contribution": 0.1235}]',
        "[]",
    ]


@pytest.mark.parametrize("classifier", ["hgb", "rf"])
def test_tree_models_get_no_reasons(classifier):
    model, frame = fitted(classifier)
    rows = frame[COLUMNS].head(5).to_dict("records")
    assert model.explainer is None
    probabilities, reasons = scored_reasons(model, rows)
    assert np.array_equal(probabilities, model.predict_proba(rows))
    assert reasons == [[] for _ in rows]


def test_reasons_json_is_json_dumps_of_each_rows_reasons():
    import json

    from streamflow_mlops.model.reasons import reasons_for

    model, frame = fitted("spline_logreg")
    rows = frame[COLUMNS].head(300)
    _, contributions = model.explain_frame(rows)
    indices = top_reason_indices(contributions)
    features = model.explainer.features
    text = reasons_json(features, {f: rows[f].to_numpy() for f in features}, contributions, indices)
    for i, record in enumerate(rows.to_dict("records")):
        expected = [
            reason | {"contribution": round(reason["contribution"], 4)}
            for reason in reasons_for(features, record, contributions[i], indices[i])
        ]
        assert text[i] == json.dumps(expected)
