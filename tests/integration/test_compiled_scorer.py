"""The compiled (numpy) scorer against the fitted pipeline's predict_proba, bit for bit, per classifier.

Real training on a generated month: seconds per classifier, so it lives with the integration tests.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from streamflow_mlops.model.compiled import PipelineModel

pytestmark = pytest.mark.slow


@functools.cache
def generated_month() -> pd.DataFrame:
    from streamflow_mlops.model.training import frame_from_tables
    from streamflow_mlops.synthetic.generate import DropSpec, build_drop

    spec = DropSpec(0, users=1200)
    return frame_from_tables(build_drop(spec)[0], spec.as_of)


@pytest.mark.parametrize("classifier", ["hgb", "spline_logreg", "logreg", "rf"])
def test_array_scoring_gives_the_pipeline_probabilities_exactly(classifier):
    from streamflow_mlops.config.schema import FEATURE_NAMES
    from streamflow_mlops.model.training import build_pipeline

    frame = generated_month()
    columns = list(FEATURE_NAMES)
    pipeline = build_pipeline(classifier, 0, columns).fit(frame[columns], frame["churn_label"])
    model = PipelineModel(pipeline, columns)
    assert model.fast is not None
    rows = frame[columns].to_dict("records")
    # Beyond the fitted range (spline extrapolation), an unseen category (one-hot "ignore"), ints as floats.
    rows[:3] = [
        rows[0] | {"monthly_fee": 10_000.0, "watch_hours_30d": -5.0},
        rows[1] | {"net_service": "Satellite", "paperless_billing": True},
        rows[2] | {"months_active": 0, "support_tickets_90d": 40},
    ]
    expected = pipeline.predict_proba(pd.DataFrame(rows, columns=columns))[:, 1]
    assert np.array_equal(model.fast.predict_proba(rows), expected)
    # One row at a time too (BLAS may sum a single row in another order than a batch, for both paths).
    for row in rows[:40]:
        one = pipeline.predict_proba(pd.DataFrame([row], columns=columns))[:, 1]
        assert np.array_equal(model.fast.predict_proba([row]), one)
    assert model.verify(rows[:5]) and model.fast is not None
